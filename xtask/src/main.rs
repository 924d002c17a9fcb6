//! `cargo xtask <task>`: project automation in Rust instead of shell scripts.
//!
//! - `setup`: installs what the build and tests need, idempotently.
//! - `test`: setup, then formatting, clippy, and every test (the README's
//!   test command; `.ci/run` calls it).
//! - `run [-- SERVER-ARGS]`: builds and starts `parlor-server` (the README's
//!   start command).
//! - `bench`: the core chunk-pipeline benchmark and the native loopback
//!   transfer benchmark (results go in BENCHMARKS.md by hand).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(),
        Some("run") => run(&args[1..]),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <setup|test|run|bench>");
            bail!("unknown task")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Installs the toolchain pieces the build and tests need; a no-op when present.
fn setup() -> Result<()> {
    for component in ["rustfmt", "clippy"] {
        if !have(if component == "rustfmt" { "rustfmt" } else { "cargo-clippy" }, "--version") {
            run_checked(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

fn test() -> Result<()> {
    setup()?;
    run_checked(cargo().args(["fmt", "--all", "--check"]))?;
    run_checked(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The end-to-end tests start the real binaries: build them first, once.
    run_checked(cargo().args(["build", "--workspace", "--bins"]))?;
    run_checked(cargo().args(["test", "--workspace"]))?;
    Ok(())
}

fn run(server_args: &[String]) -> Result<()> {
    setup()?;
    let server_args: Vec<&String> = server_args.iter().skip_while(|a| *a == "--").collect();
    run_checked(cargo().args(["run", "--release", "-p", "parlor-signaling", "--bin", "parlor-server", "--"]).args(server_args))
}

/// Kills the child when dropped, so a failed bench leaves nothing running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(args: &[String]) -> Result<()> {
    let skip_core = args.iter().any(|a| a == "--transfer-only");
    if !skip_core {
        run_checked(cargo().args(["bench", "-p", "parlor-core", "--bench", "chunk_pipeline"]))?;
    }
    run_checked(cargo().args(["build", "--release", "-p", "parlor-signaling", "-p", "parlor-cli", "--bins"]))?;
    let bin = project_root().join("target/release");
    let mb: usize = std::env::var("PARLOR_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rounds: usize = std::env::var("PARLOR_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let chunk_sizes = [16 * 1024, 32 * 1024, 48 * 1024, 63 * 1024];

    let dir = std::env::temp_dir().join(format!("parlor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("payload.bin");
    write_pseudo_random(&src, mb << 20)?;

    let mut server = Command::new(bin.join("parlor-server"));
    server.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut server = Guard(server.spawn().context("starting parlor-server")?);
    let stdout = server.0.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let base = line.trim().strip_prefix("parlor-server listening on ").context("server address")?.to_owned();

    println!("native <-> native loopback transfer, {mb} MiB, {rounds} interleaved rounds");
    let mut results: Vec<(usize, Vec<f64>)> = chunk_sizes.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..rounds {
        for (chunk, speeds) in &mut results {
            let out = dir.join(format!("out-{round}-{chunk}"));
            let secs = transfer_once(&bin, &base, &src, &out, *chunk)?;
            let speed = mb as f64 / secs;
            println!("  round {round} chunk {chunk:>6} B: {secs:6.2} s  {speed:7.1} MiB/s");
            speeds.push(speed);
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let best = results.iter().map(|(_, s)| median(s)).fold(0.0, f64::max);
    println!("median MiB/s by chunk size (ratio to the best):");
    for (chunk, speeds) in &results {
        let m = median(speeds);
        println!("  {chunk:>6} B: {m:7.1} MiB/s  ({:.2})", m / best);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One send/receive; returns seconds from the receiver's `connected` event
/// to its `file_received` event (connection set-up excluded).
fn transfer_once(bin: &Path, base: &str, src: &Path, out: &Path, chunk: usize) -> Result<f64> {
    let mut sender = Command::new(bin.join("parlor"));
    sender
        .args(["--json", "send", "--server", base, "--chunk-size", &chunk.to_string()])
        .arg(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut sender = Guard(sender.spawn()?);
    let mut lines = BufReader::new(sender.0.stdout.take().context("sender stdout")?).lines();
    let link = loop {
        let line = lines.next().context("sender ended early")??;
        if let Some(rest) = line.split("\"link\":\"").nth(1) {
            break rest.split('"').next().unwrap_or_default().to_owned();
        }
    };
    let mut receiver = Command::new(bin.join("parlor"));
    receiver.args(["--json", "receive", &link, "--out"]).arg(out).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut receiver = Guard(receiver.spawn()?);
    let rlines = BufReader::new(receiver.0.stdout.take().context("receiver stdout")?).lines();
    let mut connected = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    for line in rlines {
        let line = line?;
        ensure!(Instant::now() < deadline, "transfer took too long");
        if line.contains("\"event\":\"connected\"") && connected.is_none() {
            connected = Some(Instant::now());
        }
        if line.contains("\"event\":\"file_received\"") {
            let start = connected.context("received before connected")?;
            return Ok(start.elapsed().as_secs_f64());
        }
        if line.contains("\"event\":\"error\"") {
            bail!("receiver error: {line}");
        }
    }
    bail!("receiver ended without receiving the file")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Fast deterministic filler (xorshift), so no RNG crate is needed here.
fn write_pseudo_random(path: &Path, len: usize) -> Result<()> {
    use std::io::Write as _;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len());
        file.write_all(&buf[..n])?;
        left -= n;
    }
    file.flush()?;
    Ok(())
}
