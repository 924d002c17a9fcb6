//! https and wss served by `parlor-server` itself (`--tls-cert`,
//! `--tls-key`): a TCP accept loop, a rustls handshake per connection with
//! a certificate that can be swapped while running ([`CertStore`], reloaded
//! on SIGHUP), and then the same warp routes as plain HTTP.
//!
//! warp's own acceptor trait is private, so connections are served here
//! with hyper directly; the client address travels to the routes as a
//! [`ClientAddr`] request extension (see [`crate::routes::remote`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::{Filter, Reply};

use crate::state::App;

/// Time a client gets to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind needed.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// "certificates" or "a private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not fit the crypto provider or the certificate.
    #[error("the key in {path} cannot be used: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The client address of a request served by [`serve_tls`] (warp's own
/// remote-address extension is private to warp).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Loads a certificate chain and its private key from PEM files and checks
/// that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |what, path: &Path, reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("certificates", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("certificates", cert, "no CERTIFICATE".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error("a private key", key, e.to_string()))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let certified =
        CertifiedKey::from_der(chain, der, &provider).map_err(|source| TlsError::Key {
            path: key.to_owned(),
            source,
        })?;
    Ok(certified)
}

/// The certificate being served; [`Self::reload`] swaps it for new
/// connections while open ones keep theirs.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Loads `cert` and `key` (see [`load`]).
    pub fn open(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let current = load(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again; on an error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.cert, &self.key)?);
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The rustls server configuration over `store` (HTTP/1.1 only: warp's
/// WebSocket upgrade needs it).
pub fn server_config(store: Arc<CertStore>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Reloads `store` on every SIGHUP, logging the outcome (a bad reload keeps
/// the old certificate). Returns once SIGHUP cannot be listened for.
#[cfg(unix)]
pub async fn reload_on_sighup(store: Arc<CertStore>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(err) => {
            tracing::error!(%err, "cannot listen for SIGHUP: the certificate will not be reloaded");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match store.reload() {
            Ok(()) => tracing::info!(cert = %store.cert.display(), "TLS certificate reloaded"),
            Err(err) => {
                tracing::error!(%err, "TLS certificate reload failed; still serving the old one");
            }
        }
    }
}

/// No SIGHUP here: the certificate is the one read at start.
#[cfg(not(unix))]
pub async fn reload_on_sighup(_store: Arc<CertStore>) {}

/// Accepts TCP connections on `listener` until the app shuts down, speaks
/// TLS on each with `store`'s certificate and serves `filter` on it (with
/// WebSocket upgrades). Returns once every connection not upgraded has
/// finished (upgraded ones are counted by the app).
pub async fn serve_tls<F>(listener: TcpListener, app: Arc<App>, store: Arc<CertStore>, filter: F)
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: Reply,
    F: Filter<Error = Infallible>,
{
    let acceptor = TlsAcceptor::from(Arc::new(server_config(store)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(app.on_shutdown());
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors and the like: back off a little.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = warp::service(filter.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%addr, %err, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ClientAddr(addr));
                let mut service = service.clone();
                tower_service::Service::call(&mut service, req)
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(%addr, %err, "connection error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
