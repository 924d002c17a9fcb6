//! `parlor-server`: parses the flags, sets up logging (stderr), binds, prints
//! `parlor-server listening on http://ADDR` (`https://` with `--tls-cert`)
//! on stdout (tests and scripts read that line), and runs until SIGINT or
//! SIGTERM (SIGHUP reloads the TLS certificate).

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use clap::Parser as _;
use parlor_signaling::Config;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: with its background thread it gives
/// freed memory back to the system, where glibc kept all of a crowd of idle
/// peers' memory after they left (BENCHMARKS.md, idle signaling peers).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let background_purge = tikv_jemalloc_ctl::background_thread::write(true);
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid --log filter {:?}", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(err) = background_purge {
        tracing::warn!(%err, "jemalloc's background thread did not start: freed memory returns to the system later");
    }
    // One crypto backend for rustls, whatever else the build enabled.
    let _ = rustls::crypto::ring::default_provider().install_default();
    config.validate().context("invalid configuration")?;
    // A certificate that cannot be used is a start-up error, not a failure
    // of every handshake later.
    if let Some((cert, key)) = config.tls_files() {
        parlor_signaling::tls::load(cert, key).context("invalid --tls-cert / --tls-key")?;
    }
    let shutdown = shutdown_signal()?;

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("listener has no local address")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "parlor-server listening on {}://{addr}",
            config.scheme()
        )?;
        stdout.flush()?;
    }

    parlor_signaling::run(listener, config, shutdown).await
}

/// Registers for SIGINT (Ctrl-C) and SIGTERM now, so that a signal arriving
/// right after the listening line is printed is not missed (and does not kill
/// the process the default way); the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    })
}
