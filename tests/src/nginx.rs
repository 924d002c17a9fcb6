//! A real nginx (Debian's `nginx-light`, installed by `cargo xtask setup`)
//! with https in front of `parlor-server`, configured as the README's
//! Deploy section recommends: `Host $host` (the port dropped),
//! `X-Forwarded-For $proxy_add_x_forwarded_for`, `X-Forwarded-Proto` and the
//! WebSocket upgrade headers. It runs as an ordinary process of the test
//! (no daemon, no master process, everything in a temporary directory).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use crate::Server;
use crate::pki::Pki;

/// Debian's nginx binary.
pub const NGINX: &str = "/usr/sbin/nginx";

/// Bound on nginx starting.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The nginx binary, or `None` (after saying why) when the test should be
/// skipped. Panics when nginx is missing but required
/// (`PARLOR_REQUIRE_NGINX`, which `cargo xtask test` sets).
pub fn binary() -> Option<&'static Path> {
    if Path::new(NGINX).exists() {
        return Some(Path::new(NGINX));
    }
    assert!(
        std::env::var_os("PARLOR_REQUIRE_NGINX").is_none(),
        "PARLOR_REQUIRE_NGINX is set but {NGINX} is missing (cargo xtask setup installs nginx-light)"
    );
    eprintln!(
        "SKIPPED nginx test: {NGINX} not found (apt-get install nginx-light, or cargo xtask \
         setup); set PARLOR_REQUIRE_NGINX=1 to make this a failure"
    );
    None
}

/// A free loopback port (free when this returns; nginx binds it right after).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The nginx configuration: https on `port` in front of `upstream`.
fn nginx_conf(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.key;
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 120s;
        }}
    }}
}}
"#
    )
}

/// A running nginx, killed on drop.
#[derive(Debug)]
pub struct Nginx {
    _child: tokio::process::Child,
    /// The port it serves https on (127.0.0.1).
    pub port: u16,
    /// The host name the site is reached at (`localhost` or `127.0.0.1`).
    pub host: String,
}

impl Nginx {
    /// Starts nginx with https on `port` (127.0.0.1) in front of
    /// `upstream`, with the certificate [`Pki::issue`] wrote last, and waits
    /// until it accepts connections.
    async fn start(
        binary: &Path,
        pki: &Pki,
        host: &str,
        port: u16,
        upstream: SocketAddr,
    ) -> Result<Self> {
        let dir = pki.dir();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, port, upstream))?;
        let mut child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg("stderr")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("nginx exited at start: {status}");
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            _child: child,
            port,
            host: host.to_owned(),
        })
    }

    /// The origin browsers see: `https://HOST:PORT`.
    pub fn origin(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// Starts `parlor-server` (127.0.0.1 trusted as its proxy, `--public-url`
/// nginx's origin `https://HOST:PORT`, plus `server_args`) and nginx in
/// front of it, serving the certificate `pki` issued last.
pub async fn stack(
    binary: &Path,
    pki: &Pki,
    host: &str,
    server_args: &[&str],
) -> Result<(Server, Nginx)> {
    // nginx's port must be known for --public-url, and the server's for
    // nginx: pick nginx's first, start the server, then nginx.
    let port = free_port()?;
    let public_url = format!("https://{host}:{port}");
    let mut args = vec![
        "--trusted-proxy",
        "127.0.0.1/32",
        "--proxy-header",
        "x-forwarded-for",
        "--public-url",
        &public_url,
    ];
    args.extend_from_slice(server_args);
    let server = Server::start(&args).await?;
    let upstream: SocketAddr = server
        .base
        .strip_prefix("http://")
        .context("the server behind nginx speaks plain http")?
        .parse()?;
    let nginx = Nginx::start(binary, pki, host, port, upstream).await?;
    Ok((server, nginx))
}
