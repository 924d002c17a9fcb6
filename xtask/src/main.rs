//! `cargo xtask <task>`: project automation in Rust instead of shell scripts.
//!
//! - `setup`: installs what the build and tests need, idempotently.
//! - `test`: setup, then formatting, clippy, and every test (the README's
//!   test command; `.ci/run` calls it).
//! - `run [-- SERVER-ARGS]`: builds and starts `parlor-server` (the README's
//!   start command).
//! - `bench`: the core chunk-pipeline benchmark, the native loopback
//!   transfer benchmark and the relay benchmark (results go in BENCHMARKS.md
//!   by hand). `bench relay` runs only the relay benchmark ([`relay_bench`]:
//!   embedded TURN vs coturn vs the server relay). `bench signaling [SIZE...]`
//!   runs only the idle-peer memory benchmark (Parlor vs PeerJS's server).
//! - `fuzz`: each cargo-fuzz target for `PARLOR_FUZZ_SECS` (also part of `test`).

mod relay_bench;

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
        Some("fuzz") => setup_fuzz().and_then(|()| fuzz()),
        _ => {
            eprintln!("usage: cargo xtask <setup|test|run|bench|fuzz>");
            bail!("unknown task")
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo run` of the benchmark binary `name` of the `parlor-tests` crate
/// (a release build when `release`).
fn tests_bin(name: &str, release: bool) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "-q", "-p", "parlor-tests", "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    cmd
}

fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed with {status}");
    Ok(())
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Trunk 0.22 needs a newer rustc than this project's 1.95; 0.21.14 builds
/// and works offline with tools from PATH.
const TRUNK_VERSION: &str = "0.21.14";
/// The binaryen npm package whose `wasm-opt` matches Trunk.toml's
/// `wasm_opt = "version_132"` (Debian's binaryen is too old for Rust 1.95).
const BINARYEN_VERSION: &str = "132.0.0";
/// The real Chromium binary the browser tests drive.
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// nginx (Debian's `nginx-light`), the reverse proxy of `tests/tests/nginx.rs`.
const NGINX: &str = "/usr/sbin/nginx";

/// Installs what building the web app needs; a no-op when present.
fn setup_build() -> Result<()> {
    for (program, component) in [("rustfmt", "rustfmt"), ("cargo-clippy", "clippy")] {
        if !have(program, "--version") {
            run_checked(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    if !String::from_utf8_lossy(&targets.stdout).contains("wasm32-unknown-unknown") {
        run_checked(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    // The CLI must equal the wasm-bindgen crate version in Cargo.lock. Its own
    // lockfile pins crates the registry here may not serve, so no --locked.
    let wbg = locked_version("wasm-bindgen")?;
    if version_of("wasm-bindgen").as_deref() != Some(&format!("wasm-bindgen {wbg}")) {
        run_checked(cargo().args(["install", "wasm-bindgen-cli", "--version", &wbg]))?;
    }
    if version_of("trunk").as_deref() != Some(&format!("trunk {TRUNK_VERSION}")) {
        run_checked(cargo().args(["install", "trunk", "--version", TRUNK_VERSION, "--locked"]))?;
    }
    let wasm_opt = tools_dir().join("node_modules/.bin/wasm-opt");
    if !version_of(wasm_opt.to_str().unwrap_or_default()).is_some_and(|v| v.contains("version 132"))
    {
        npm_install(&format!("binaryen@{BINARYEN_VERSION}"))?;
    }
    Ok(())
}

/// Installs the Debian packages the tests need: Chromium and its driver
/// (browser tests), iproute2 and iptables (the NAT matrix in network
/// namespaces), coturn (the relay benchmark) and nginx (the reverse-proxy
/// test). Skipped when all are there.
fn setup_browser() -> Result<()> {
    let present = Path::new(CHROMIUM).exists()
        && have("chromedriver", "--version")
        && have("ip", "-V")
        && have("iptables", "--version")
        && Path::new("/usr/bin/turnserver").exists()
        && Path::new(NGINX).exists();
    if present {
        return Ok(());
    }
    run_checked(Command::new("apt-get").arg("update"))?;
    run_checked(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
                "iproute2",
                "iptables",
                "coturn",
                // tests/tests/nginx.rs: parlor-server behind a real reverse proxy.
                "nginx-light",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// cargo-fuzz needs nightly (for the sanitizer flags) and the cargo-fuzz CLI.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs what the fuzz step needs.
fn setup_fuzz() -> Result<()> {
    if !Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        run_checked(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if version_of("cargo-fuzz").as_deref() != Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        run_checked(cargo().args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

fn setup() -> Result<()> {
    setup_build()?;
    setup_browser()?;
    setup_fuzz()
}

/// Fuzz targets run by `test`, each for `PARLOR_FUZZ_SECS` (default 30) seconds.
const FUZZ_TARGETS: &[&str] = &["signaling_message", "peer_frame", "core_machines"];

fn fuzz() -> Result<()> {
    let secs = std::env::var("PARLOR_FUZZ_SECS").unwrap_or_else(|_| "30".into());
    for target in FUZZ_TARGETS {
        // `cargo fuzz` must run from the project root; it finds fuzz/ itself.
        run_checked(
            Command::new("cargo")
                .args([
                    "+nightly",
                    "fuzz",
                    "run",
                    target,
                    "--",
                    &format!("-max_total_time={secs}"),
                ])
                .env_remove("CARGO"),
        )?;
    }
    Ok(())
}

/// Installs an npm package (`name@version`) into [`tools_dir`].
fn npm_install(package: &str) -> Result<()> {
    std::fs::create_dir_all(tools_dir())?;
    run_checked(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(tools_dir())
            .arg(package),
    )
}

/// Where project-local tools (wasm-opt from npm) live; git-ignored.
fn tools_dir() -> PathBuf {
    project_root().join(".tools")
}

/// First line of `PROGRAM --version`, if it runs.
fn version_of(program: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    })
}

/// The version of `package` in Cargo.lock.
fn locked_version(package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(project_root().join("Cargo.lock"))?;
    let needle = format!("name = \"{package}\"\nversion = \"");
    let start = lock
        .find(&needle)
        .with_context(|| format!("{package} not in Cargo.lock"))?
        + needle.len();
    Ok(lock[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Builds the web app into dist/ with Trunk (release: small, optimised).
fn build_web() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_dir().join("node_modules/.bin")];
    paths.extend(std::env::split_paths(&path));
    run_checked(
        Command::new("trunk")
            .args(["build", "--release"])
            .env("PATH", std::env::join_paths(paths)?),
    )
}

fn test() -> Result<()> {
    setup()?;
    run_checked(cargo().args(["fmt", "--all", "--check"]))?;
    run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_checked(cargo().args([
        "clippy",
        "-p",
        "parlor-client-wasm",
        "--target",
        "wasm32-unknown-unknown",
        "--",
        "-D",
        "warnings",
    ]))?;
    let web_built = if project_root().join("web/index.html").exists() {
        build_web()?;
        true
    } else {
        eprintln!(
            "!!! xtask: web/index.html is missing: the web app is not built and browser tests will be skipped"
        );
        false
    };
    // The end-to-end tests start the real binaries. Build them with exactly
    // the command the test harness uses to check they are current, so that
    // check is a no-op: `cargo build` at the root, as a packager would. (`cargo test` resolves features with dev-dependencies
    // and so builds the dependency graph once more; one `cargo test` run
    // keeps that to once.)
    run_checked(cargo().args(["build", "--bins"]))?;
    run_checked(
        cargo()
            .args(["test", "--workspace"])
            .env("PARLOR_BROWSER_TESTS", if web_built { "1" } else { "0" })
            // setup() installed nginx: its test must not skip.
            .env("PARLOR_REQUIRE_NGINX", "1"),
    )?;
    // The web client's browser-glue tests, in headless Chromium.
    run_checked(
        cargo()
            .args([
                "test",
                "-p",
                "parlor-client-wasm",
                "--target",
                "wasm32-unknown-unknown",
            ])
            .env("CHROMEDRIVER", "/usr/bin/chromedriver"),
    )?;
    // The browser benchmark, briefly, only to show it still runs (numbers
    // from a debug harness and 4 MiB mean nothing; `cargo xtask bench
    // browser` measures).
    if web_built {
        run_checked(
            tests_bin("browser_bench", false)
                .env("PARLOR_BENCH_MB", "4")
                .env("PARLOR_BENCH_ROUNDS", "1"),
        )?;
    }
    fuzz()
}

fn run(server_args: &[String]) -> Result<()> {
    setup_build()?;
    build_web()?;
    let server_args: Vec<&String> = server_args.iter().skip_while(|a| *a == "--").collect();
    run_checked(
        cargo()
            .args([
                "run",
                "--release",
                "-p",
                "parlor-signaling",
                "--bin",
                "parlor-server",
                "--",
            ])
            .args(server_args),
    )
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
    if args.first().is_some_and(|a| a == "relay") {
        return relay_bench::run();
    }
    if args.first().is_some_and(|a| a == "signaling") {
        return signaling_bench(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "browser") {
        setup()?;
        build_web()?;
        return run_checked(&mut tests_bin("browser_bench", true));
    }
    let skip_core = args.iter().any(|a| a == "--transfer-only");
    if !skip_core {
        run_checked(cargo().args(["bench", "-p", "parlor-core", "--bench", "chunk_pipeline"]))?;
    }
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "parlor-signaling",
        "-p",
        "parlor-cli",
        "--bins",
    ]))?;
    let bin = project_root().join("target/release");
    let mb: usize = std::env::var("PARLOR_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("PARLOR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Sender settings compared side by side; every round runs each once, in
    // turn, so machine noise spreads evenly over them.
    let variants: Vec<(String, Vec<String>)> = [
        (
            "chunk 16 KiB, watermarks 1 MiB/256 KiB",
            16 * 1024,
            1 << 20,
            256 << 10,
        ),
        (
            "chunk 32 KiB, watermarks 1 MiB/256 KiB",
            32 * 1024,
            1 << 20,
            256 << 10,
        ),
        (
            "chunk 48 KiB, watermarks 1 MiB/256 KiB",
            48 * 1024,
            1 << 20,
            256 << 10,
        ),
        (
            "chunk 63 KiB, watermarks 1 MiB/256 KiB",
            63 * 1024,
            1 << 20,
            256 << 10,
        ),
        (
            "chunk 63 KiB, watermarks 4 MiB/1 MiB",
            63 * 1024,
            4 << 20,
            1 << 20,
        ),
        (
            "chunk 63 KiB, watermarks 16 MiB/4 MiB",
            63 * 1024,
            16 << 20,
            4 << 20,
        ),
        (
            "chunk 16 KiB, watermarks 16 MiB/4 MiB",
            16 * 1024,
            16 << 20,
            4 << 20,
        ),
    ]
    .into_iter()
    .map(|(name, chunk, high, low): (&str, usize, u64, u64)| {
        let args = [
            "--chunk-size".to_owned(),
            chunk.to_string(),
            "--high-watermark".into(),
            high.to_string(),
            "--low-watermark".into(),
            low.to_string(),
        ];
        (name.to_owned(), args.to_vec())
    })
    .chain(std::iter::once((
        "defaults (no flags)".to_owned(),
        Vec::new(),
    )))
    .collect();

    let dir = std::env::temp_dir().join(format!("parlor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("payload.bin");
    write_pseudo_random(&src, mb << 20)?;

    let mut server = Command::new(bin.join("parlor-server"));
    server
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Guard(server.spawn().context("starting parlor-server")?);
    let stdout = server.0.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix("parlor-server listening on ")
        .context("server address")?
        .to_owned();

    println!("native <-> native loopback transfer, {mb} MiB, {rounds} interleaved rounds");
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (i, (name, args)) in variants.iter().enumerate() {
            let out = dir.join(format!("out-{round}-{i}"));
            let secs = transfer_once(&bin, &base, &src, &out, args)?;
            let speed = mb as f64 / secs;
            println!("  round {round} {name:<42} {secs:6.2} s  {speed:7.1} MiB/s");
            results[i].push(speed);
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let best = results.iter().map(|s| median(s)).fold(0.0, f64::max);
    println!("median MiB/s (ratio to the best):");
    for ((name, _), speeds) in variants.iter().zip(&results) {
        let m = median(speeds);
        println!("  {name:<42} {m:7.1} MiB/s  ({:.2})", m / best);
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop(server);
    relay_bench::run()?;
    run_checked(cargo().args(["run", "-q", "-p", "parlor-tests", "--bin", "signal_latency"]))?;
    web_bench()
}

/// PeerJS's signaling server, the baseline of `bench signaling`.
const PEERJS_VERSION: &str = "1.0.2";

/// Idle signaling peers: memory per peer in `parlor-server` and in PeerJS's
/// server, side by side (`tests/src/bin/idle_peers.rs`; `args` are crowd
/// sizes).
fn signaling_bench(args: &[String]) -> Result<()> {
    let peerjs = tools_dir().join("node_modules/peer/package.json");
    let installed = std::fs::read_to_string(&peerjs)
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{PEERJS_VERSION}\"")));
    if !installed {
        npm_install(&format!("peer@{PEERJS_VERSION}"))?;
    }
    run_checked(tests_bin("idle_peers", true).arg("--").args(args))
}

/// The web app's release bundle size (raw and gzip -9) and the time from
/// opening an invite link to an open data channel, in headless Chromium.
fn web_bench() -> Result<()> {
    setup()?;
    build_web()?;
    println!("web bundle (dist/), bytes raw and gzip -9:");
    for entry in std::fs::read_dir(project_root().join("dist"))? {
        let path = entry?.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        if matches!(ext, "wasm" | "js" | "css" | "html") {
            let raw = std::fs::metadata(&path)?.len();
            let gz = Command::new("gzip")
                .args(["-9", "-c"])
                .arg(&path)
                .output()?
                .stdout
                .len();
            println!(
                "  {:<48} {raw:>8} {gz:>8}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    run_checked(&mut tests_bin("open_latency", false))
}

/// One send/receive; returns seconds from the receiver's `connected` event
/// to its `file_received` event (connection set-up excluded).
fn transfer_once(bin: &Path, base: &str, src: &Path, out: &Path, extra: &[String]) -> Result<f64> {
    let mut sender = Command::new(bin.join("parlor"));
    sender
        .args(["--json", "--ephemeral", "send", "--server", base])
        .args(extra)
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
    receiver
        .args(["--json", "--ephemeral", "receive", &link, "--out"])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
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
