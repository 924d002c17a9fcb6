//! TLS towards `parlor-server` (https, wss): rustls with the ring provider,
//! the webpki root certificates plus any `--ca-cert` (a private CA), and
//! error messages that say which host's certificate was refused and that
//! `--ca-cert` exists.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `--ca-cert` unreadable, or not PEM certificates.
    #[error("cannot read certificates from --ca-cert {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A `--ca-cert` certificate rustls does not accept as a trust anchor.
    #[error("--ca-cert {path}: unusable certificate: {source}")]
    CaCert {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The crypto provider refused the protocol versions.
    #[error("TLS setup failed: {0}")]
    Provider(#[from] rustls::Error),
}

/// The client configuration for every https/wss connection: webpki roots,
/// plus the certificates in `ca_cert` (PEM, one or more).
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_cert {
        let ca_file = |reason: String| TlsSetupError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ca_file(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_file("no CERTIFICATE in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|source| TlsSetupError::CaCert {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The code API and the WebSocket upgrade both speak HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The rustls error somewhere in `err`'s chain (also inside an
/// `io::Error`, where tokio-rustls puts handshake failures).
fn rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner);
        }
        next = err.source();
    }
    None
}

/// A sentence for a TLS failure talking to `host`, or `None` when `err`
/// is not one. A refused certificate names the host and `--ca-cert`.
pub fn explain(err: &(dyn StdError + 'static), host: &str) -> Option<String> {
    let tls = rustls_error(err)?;
    Some(match tls {
        rustls::Error::InvalidCertificate(why) => format!(
            "the TLS certificate of {host} is not trusted ({why:?}); if the server uses \
             a private certificate authority, pass its certificate with --ca-cert FILE"
        ),
        other => format!("TLS with {host} failed: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_an_error_naming_it() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }

    #[test]
    fn certificate_errors_inside_io_errors_are_explained() {
        let io = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        let text = explain(&io, "example.test:443").unwrap();
        assert!(text.contains("example.test:443") && text.contains("--ca-cert"));
        assert!(explain(&std::io::Error::other("plain"), "h").is_none());
    }
}
