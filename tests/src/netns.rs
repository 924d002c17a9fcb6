//! A small "internet" built from Linux network namespaces, for NAT tests:
//! the real `parlor-server` in one namespace, two real `parlor` peers each
//! behind its own router namespace that may translate addresses (iptables
//! MASQUERADE) and filter traffic.
//!
//! ```text
//!                        wan: bridge br0, 198.18.0.0/24 ("the internet")
//!        ┌──────────────────────────────┼───────────────────────────────┐
//!   198.18.0.11 (wan)             198.18.0.1 (wan)                198.18.0.12 (wan)
//!   ┌────────────┐              ┌────────────────┐                ┌────────────┐
//!   │    nat1    │              │     server     │                │    nat2    │
//!   │   router   │              │ parlor-server  │                │   router   │
//!   └────────────┘              │ :8080 HTTP/WS  │                └────────────┘
//!   10.0.1.1 (lan)              │ :3478 TURN/STUN│                10.0.2.1 (lan)
//!        │                      └────────────────┘                      │
//!   10.0.1.2 (eth0)                                               10.0.2.2 (eth0)
//!   ┌────────────┐                                                ┌────────────┐
//!   │   peer1    │                                                │   peer2    │
//!   │  parlor    │                                                │  parlor    │
//!   └────────────┘                                                └────────────┘
//! ```
//!
//! The server also has a second address, [`SERVER_IP2`] (198.18.0.3), for a
//! listener that wants a port [`SERVER_IP`] already uses (TURN over TLS on
//! 443 beside https on 443).
//!
//! Behind a router with [`Nat::None`] the peer's side is public instead:
//! 198.18.N.0/24, routed via that router's wan address (the server and the
//! other router get a route to it). 198.18.0.0/15 is the benchmarking range;
//! the server's TURN relay relays to it while refusing private ranges.
//!
//! Every namespace is named `parlor-PID-CELL-ROLE`, so concurrent runs and
//! cells never collide; interfaces are created directly inside namespaces
//! (never in the host's), so their short names only need to be unique per
//! namespace. [`Lab`] deletes every namespace it created when it drops, which
//! also deletes their veth pairs. Nothing here touches the host's interfaces
//! or firewall. Needs root (or `CAP_SYS_ADMIN` + `CAP_NET_ADMIN`), iproute2,
//! `iptables` and `sysctl`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::browser::Page;
use crate::{Peer, Server};

/// The server's address on the "internet".
pub const SERVER_IP: &str = "198.18.0.1";
/// The "internet" and every address behind the routers.
pub const LAB_INTERNET: &str = "198.18.0.0/15";
/// The server's second address on the "internet" (see the module docs).
pub const SERVER_IP2: &str = "198.18.0.3";
/// The server's HTTP/WebSocket port.
pub const HTTP_PORT: u16 = 8080;
/// The port of https/wss and of TURN over TLS, the one port a
/// [`Firewall::TlsOnly`] network lets out.
pub const TLS_PORT: u16 = 443;
/// The embedded TURN (and STUN) port, UDP and TCP.
pub const TURN_PORT: u16 = 3478;

/// Bound on each `ip` / `iptables` / `sysctl` command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Env var that lets the matrix be skipped (loudly) where namespaces are
/// unavailable.
pub const ALLOW_NO_NETNS: &str = "PARLOR_ALLOW_NO_NETNS";

/// How a router translates addresses of its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// No translation: the peer has a public address, merely routed.
    None,
    /// `MASQUERADE`: Linux conntrack keeps the source port when it can and
    /// reuses the mapping for every destination (endpoint-independent
    /// mapping), and lets in only replies from where the peer sent to
    /// (address- and port-dependent filtering): a port-restricted cone.
    /// The mapping stays endpoint-independent only because every router
    /// also drops unsolicited packets to itself (see [`Lab::build`]).
    PortRestrictedCone,
    /// `MASQUERADE --random-fully`: a fresh random port for every new
    /// destination (address- and port-dependent mapping): symmetric.
    Symmetric,
}

/// What a router forwards (the `filter` table's `FORWARD` chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// Everything.
    Open,
    /// Everything but UDP (dropped both ways).
    NoUdp,
    /// Only TCP from the peer to the server's HTTP port, and its replies.
    HttpOnly,
    /// Only TCP from the peer to port [`TLS_PORT`] (443) of any address,
    /// and its replies: a network that lets out nothing but TLS.
    TlsOnly,
}

/// One peer's router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Router {
    /// Address translation.
    pub nat: Nat,
    /// Forwarding rules.
    pub firewall: Firewall,
}

impl Router {
    /// A router with `nat` that forwards everything.
    pub const fn open(nat: Nat) -> Self {
        Self {
            nat,
            firewall: Firewall::Open,
        }
    }
}

/// Whether the matrix can run here. `Ok(true)`: run. `Ok(false)`: it cannot,
/// a banner saying so was printed, and [`ALLOW_NO_NETNS`]`=1` allows
/// skipping. `Err`: it cannot and skipping is not allowed (the banner was
/// printed too); the test must fail.
pub fn available(test: &str) -> Result<bool> {
    let Err(reason) = probe(test) else {
        return Ok(true);
    };
    let allowed = std::env::var(ALLOW_NO_NETNS).as_deref() == Ok("1");
    let rule = "!".repeat(78);
    let verdict = if allowed {
        format!("{ALLOW_NO_NETNS}=1 is set, so `{test}` passes WITHOUT testing anything.")
    } else {
        format!(
            "`{test}` FAILS. Run the tests as root with iproute2 and iptables installed\n\
             !!! (apt-get install iproute2 iptables), or set {ALLOW_NO_NETNS}=1 to skip."
        )
    };
    eprintln!(
        "\n{rule}\n!!! NAT MATRIX NOT RUN: {reason:#}\n!!! The NAT tests need Linux network \
         namespaces (ip netns) and iptables inside them.\n!!! {verdict}\n{rule}\n"
    );
    if allowed {
        Ok(false)
    } else {
        Err(reason.context("NAT MATRIX NOT RUN"))
    }
}

/// Creates a throwaway namespace and runs every tool the lab needs inside it.
fn probe(test: &str) -> Result<()> {
    let mut lab = Namespaces::default();
    let ns = lab.add(&format!("parlor-{}-{test}-probe", std::process::id()))?;
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;
    run(&["ip", "netns", "exec", &ns, "iptables", "-t", "nat", "-S"])?;
    Ok(())
}

/// Namespaces deleted on drop.
#[derive(Debug, Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates namespace `name` and remembers to delete it.
    fn add(&mut self, name: &str) -> Result<String> {
        run(&["ip", "netns", "add", name])?;
        self.0.push(name.to_owned());
        Ok(name.to_owned())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Processes still inside keep a namespace alive until they exit (the
        // harness kills them on drop); its name goes away now regardless.
        for ns in self.0.iter().rev() {
            if let Err(err) = run(&["ip", "netns", "del", ns]) {
                eprintln!("warning: deleting network namespace {ns}: {err:#}");
            }
        }
    }
}

/// The topology in the module docs; everything is removed on drop.
#[derive(Debug)]
pub struct Lab {
    server: String,
    routers: [String; 2],
    peers: [String; 2],
    namespaces: Namespaces,
}

impl Lab {
    /// Builds the lab for `cell` (part of every namespace name) with the two
    /// peers behind `routers`.
    pub fn build(cell: &str, routers: [Router; 2]) -> Result<Self> {
        let mut namespaces = Namespaces::default();
        let prefix = format!("parlor-{}-{cell}", std::process::id());
        let wan = namespaces.add(&format!("{prefix}-wan"))?;
        let server = namespaces.add(&format!("{prefix}-server"))?;
        let nat1 = namespaces.add(&format!("{prefix}-nat1"))?;
        let nat2 = namespaces.add(&format!("{prefix}-nat2"))?;
        let peer1 = namespaces.add(&format!("{prefix}-peer1"))?;
        let peer2 = namespaces.add(&format!("{prefix}-peer2"))?;
        let lab = Self {
            server,
            routers: [nat1, nat2],
            peers: [peer1, peer2],
            namespaces,
        };

        for ns in lab.namespaces.0.iter() {
            ip(ns, &["link", "set", "lo", "up"])?;
        }

        // The "internet": a bridge in `wan`, the server and each router's
        // public side plugged into it.
        ip(&wan, &["link", "add", "br0", "type", "bridge"])?;
        ip(&wan, &["link", "set", "br0", "up"])?;
        let uplinks = [
            ("server", lab.server.as_str(), format!("{SERVER_IP}/24")),
            ("nat1", lab.routers[0].as_str(), format!("{}/24", wan_ip(0))),
            ("nat2", lab.routers[1].as_str(), format!("{}/24", wan_ip(1))),
        ];
        for (port, ns, addr) in &uplinks {
            ip(
                &wan,
                &[
                    "link", "add", port, "type", "veth", "peer", "name", "wan", "netns", ns,
                ],
            )?;
            ip(&wan, &["link", "set", port, "master", "br0", "up"])?;
            ip(ns, &["addr", "add", addr, "dev", "wan"])?;
            ip(ns, &["link", "set", "wan", "up"])?;
        }
        ip(
            &lab.server,
            &["addr", "add", &format!("{SERVER_IP2}/24"), "dev", "wan"],
        )?;

        for (i, router) in routers.iter().enumerate() {
            let nat = &lab.routers[i];
            let peer = &lab.peers[i];
            let (lan, host) = lan_ips(i, router.nat);
            ip(
                nat,
                &[
                    "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", peer,
                ],
            )?;
            ip(nat, &["addr", "add", &format!("{lan}/24"), "dev", "lan"])?;
            ip(nat, &["link", "set", "lan", "up"])?;
            ip(peer, &["addr", "add", &format!("{host}/24"), "dev", "eth0"])?;
            ip(peer, &["link", "set", "eth0", "up"])?;
            ip(peer, &["route", "add", "default", "via", &lan])?;
            exec(nat, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
            // Like any home router, drop unsolicited traffic to the router
            // itself. This matters for hole punching: a packet that arrives
            // before the peer behind has sent to its source (the first
            // connectivity check in one direction always does) would
            // otherwise create a conntrack entry for the router's own port,
            // and the peer's own packet to that source a moment later would
            // then collide with it and be given another port, breaking
            // endpoint-independent mapping (ICE then falls back to TURN).
            // Dropped packets never have their conntrack entry confirmed.
            iptables(
                nat,
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    "wan",
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            iptables(nat, &["-A", "INPUT", "-i", "wan", "-j", "DROP"])?;

            match router.nat {
                // Public addresses: the server and the other router route to
                // them through this router (routers have no default route,
                // so nothing else leaves the lab).
                Nat::None => {
                    let subnet = format!("{}/24", subnet_prefix(i, Nat::None));
                    for ns in [&lab.server, &lab.routers[1 - i]] {
                        ip(ns, &["route", "add", &subnet, "via", &wan_ip(i)])?;
                    }
                }
                Nat::PortRestrictedCone => iptables(
                    nat,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "wan",
                        "-j",
                        "MASQUERADE",
                    ],
                )?,
                Nat::Symmetric => iptables(
                    nat,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-o",
                        "wan",
                        "-j",
                        "MASQUERADE",
                        "--random-fully",
                    ],
                )?,
            }
            match router.firewall {
                Firewall::Open => {}
                Firewall::NoUdp => iptables(nat, &["-A", "FORWARD", "-p", "udp", "-j", "DROP"])?,
                Firewall::HttpOnly => allow_only_tcp(nat, Some(SERVER_IP), HTTP_PORT)?,
                Firewall::TlsOnly => allow_only_tcp(nat, None, TLS_PORT)?,
            }
        }
        Ok(lab)
    }

    /// `ip netns exec NS`, the prefix that runs a command inside `ns`.
    fn wrapper(ns: &str) -> [&str; 4] {
        ["ip", "netns", "exec", ns]
    }

    /// Starts `parlor-server` in the server namespace on
    /// [`SERVER_IP`]:[`HTTP_PORT`] with its TURN relay on [`TURN_PORT`],
    /// plus `extra` arguments.
    pub async fn start_server(&self, extra: &[&str]) -> Result<Server> {
        self.start_server_on(&format!("{SERVER_IP}:{HTTP_PORT}"), SERVER_IP, extra)
            .await
    }

    /// Starts `parlor-server` in the server namespace listening on `listen`
    /// (`IP:PORT`), its TURN relay listening on and advertising `turn_ip`
    /// (port [`TURN_PORT`]; a `--turn-tls-port` listener binds there too),
    /// plus `extra` arguments.
    pub async fn start_server_on(
        &self,
        listen: &str,
        turn_ip: &str,
        extra: &[&str],
    ) -> Result<Server> {
        let turn_port = TURN_PORT.to_string();
        let mut args = vec![
            "--listen",
            listen,
            "--turn-port",
            &turn_port,
            "--turn-listen-ip",
            turn_ip,
            "--public-ip",
            turn_ip,
            // The lab's "internet" is the benchmarking range 198.18.0.0/15,
            // which the relay refuses by default (coturn's deny list).
            "--turn-allow",
            LAB_INTERNET,
        ];
        args.extend_from_slice(extra);
        Server::start_wrapped(&Self::wrapper(&self.server), &args).await
    }

    /// Starts `parlor --json ARGS...` in peer namespace `index` (0 or 1).
    pub fn spawn_peer(&self, index: usize, label: &str, args: &[&str]) -> Result<Peer> {
        Peer::spawn_wrapped(&self.peer_wrapper(index)?, label, args)
    }

    /// The command prefix that runs a program in peer namespace `index`
    /// (0 or 1), e.g. for [`crate::transfer`].
    pub fn peer_wrapper(&self, index: usize) -> Result<[&str; 4]> {
        Ok(Self::wrapper(self.peer_namespace(index)?))
    }

    /// Opens a headless Chromium in peer namespace `index` (0 or 1), with
    /// extra Chromium flags `args` (see [`Page::open_in`]).
    ///
    /// The lab has no DNS server, and the host's resolver is unreachable
    /// from it: a Chromium in a peer namespace spent about 16 s on its first
    /// navigation (even to `about:blank`) until lookups were made to fail at
    /// once. So every name but localhost and the lab's addresses does.
    pub async fn open_page(&self, index: usize, args: &[String]) -> Result<Page> {
        let mut all = vec![
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 198.18.*".to_owned(),
        ];
        all.extend_from_slice(args);
        Page::open_in(Some(self.peer_namespace(index)?), &all).await
    }

    /// The name of peer `index`'s namespace (0 or 1).
    fn peer_namespace(&self, index: usize) -> Result<&str> {
        self.peers
            .get(index)
            .map(String::as_str)
            .context("peer index is 0 or 1")
    }

    /// Cuts (`true`) or restores (`false`) everything router `index`
    /// forwards, as if the peer behind it lost its network: a DROP rule
    /// first in its FORWARD chain.
    pub fn cut(&self, index: usize, cut: bool) -> Result<()> {
        let ns = self.routers.get(index).context("router index is 0 or 1")?;
        let op = if cut { "-I" } else { "-D" };
        exec(ns, &["iptables", op, "FORWARD", "-j", "DROP"])
    }

    /// Router `index`'s connection tracking table (`/proc/net/nf_conntrack`).
    pub fn conntrack(&self, index: usize) -> Result<String> {
        let ns = self.routers.get(index).context("router index is 0 or 1")?;
        exec_output(ns, &["cat", "/proc/net/nf_conntrack"])
    }

    /// The routers' rule counters and connection tracking tables, for
    /// failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for ns in &self.routers {
            for cmd in [
                &["iptables", "-L", "FORWARD", "-v", "-n"][..],
                &["iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-n"][..],
                &["cat", "/proc/net/nf_conntrack"][..],
            ] {
                let text = match exec_output(ns, cmd) {
                    Ok(text) => text,
                    Err(err) => format!("({err:#})"),
                };
                out.push_str(&format!("--- {ns}: {}\n{text}\n", cmd.join(" ")));
            }
        }
        out
    }
}

/// Makes router `nat` forward only TCP from its peer to `port` (of `dest`,
/// or of any address), and the replies.
fn allow_only_tcp(nat: &str, dest: Option<&str>, port: u16) -> Result<()> {
    iptables(
        nat,
        &[
            "-A",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ],
    )?;
    let port = port.to_string();
    let mut rule = vec!["-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "tcp"];
    if let Some(dest) = dest {
        rule.extend(["-d", dest]);
    }
    rule.extend(["--dport", &port, "-j", "ACCEPT"]);
    iptables(nat, &rule)?;
    iptables(nat, &["-A", "FORWARD", "-j", "DROP"])
}

/// A listener on 127.0.0.1 in this process's network namespace whose
/// connections are forwarded to a loopback port inside another namespace
/// (e.g. a chromedriver running there, which no socket here can reach).
/// Stops, with every connection, on drop.
#[derive(Debug)]
pub struct Forward {
    /// The local port to connect to.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Listens on a free local port and forwards each connection to
    /// 127.0.0.1:`port` inside namespace `ns`.
    pub async fn start(ns: &str, port: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let local = listener.local_addr()?.port();
        let ns = ns.to_owned();
        let target = SocketAddr::from(([127, 0, 0, 1], port));
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        match accepted {
                            Ok((inbound, _)) => {
                                connections.spawn(forward(inbound, ns.clone(), target));
                            }
                            // E.g. out of file descriptors: back off a little.
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { port: local, task })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies between `inbound` and a new connection to `target` inside `ns`
/// until either side closes; a target that refuses just closes `inbound`.
async fn forward(mut inbound: tokio::net::TcpStream, ns: String, target: SocketAddr) {
    let connected = tokio::task::spawn_blocking(move || connect_in(&ns, target)).await;
    let Ok(Ok(outbound)) = connected else { return };
    let outbound = outbound
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(outbound));
    if let Ok(mut outbound) = outbound {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}

/// Connects to `addr` from inside network namespace `ns`, on a thread of
/// its own that first enters `ns` (`setns`): a socket stays in the
/// namespace it was made in, whichever thread uses it later, and the thread
/// ends with the process's other threads untouched.
pub fn connect_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpStream> {
    use std::os::fd::AsFd as _;
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("entering network namespace {ns}"))?;
                std::net::TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)
                    .with_context(|| format!("connecting to {addr} in {ns}"))
            })
            .join()
            .map_err(|_| anyhow!("the thread connecting in {ns} panicked"))?
    })
}

/// The wan address of router `i` (0 or 1).
fn wan_ip(i: usize) -> String {
    format!("198.18.0.{}", 11 + i)
}

/// The first three octets of router `i`'s lan: private behind a NAT, public
/// (routed) without.
fn subnet_prefix(i: usize, nat: Nat) -> String {
    match nat {
        Nat::None => format!("198.18.{}", 1 + i),
        Nat::PortRestrictedCone | Nat::Symmetric => format!("10.0.{}", 1 + i),
    }
}

/// Router `i`'s lan address and its peer's address.
fn lan_ips(i: usize, nat: Nat) -> (String, String) {
    let prefix = subnet_prefix(i, nat);
    (format!("{prefix}.1"), format!("{prefix}.2"))
}

/// `ip -n NS ARGS...`
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// `ip netns exec NS ARGS...`
fn exec(ns: &str, args: &[&str]) -> Result<()> {
    exec_output(ns, args).map(drop)
}

/// `ip netns exec NS ARGS...`, returning its stdout.
fn exec_output(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run_output(&all)
}

/// `iptables ARGS...` inside `ns` (never the host's).
fn iptables(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["iptables"];
    all.extend_from_slice(args);
    exec(ns, &all)
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; fails on a
/// non-zero exit, with its stderr.
fn run(args: &[&str]) -> Result<()> {
    run_output(args).map(drop)
}

/// [`run`], returning stdout.
fn run_output(args: &[&str]) -> Result<String> {
    use std::io::Read as _;
    let line = args.join(" ");
    let (program, rest) = args.split_first().context("empty command")?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running `{line}`"))?;
    // Everything run here prints little, so polling without reading cannot
    // fill a pipe and block the child.
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{line}` did not finish in {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    if !status.success() {
        bail!("`{line}` failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}
