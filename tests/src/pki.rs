//! A private certificate authority made at test time (rcgen), for servers
//! that speak TLS in tests: `parlor-server --tls-cert`, nginx in front of
//! it. Peers trust it with `parlor --ca-cert` ([`Pki::ca_path`]); a
//! Chromium page trusts one issued certificate through
//! [`Leaf::chromium_flag`].

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest as _, Sha256};

use crate::Server;

/// A private CA in a temporary directory (`ca.pem`), which issues server
/// certificates for 127.0.0.1 and `localhost` into the same directory
/// (`server.pem`, `server.key`).
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

/// A server certificate [`Pki::issue`] made.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Base64 of the SHA-256 of its public key (SubjectPublicKeyInfo).
    pub spki_sha256: String,
}

impl Leaf {
    /// The Chromium flag that accepts this certificate (and only it) as if
    /// a trusted CA had issued it.
    pub fn chromium_flag(&self) -> String {
        format!("--ignore-certificate-errors-spki-list={}", self.spki_sha256)
    }
}

impl Pki {
    /// A new CA (panics on failure: it is test set-up).
    #[allow(clippy::unwrap_used)]
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Parlor test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, ca_key }
    }

    /// The directory holding the CA and the issued certificate.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (PEM), for `parlor --ca-cert`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The last issued server certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The last issued server certificate's key (PEM).
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// Issues a server certificate (subject `name`, serial `serial`) for
    /// 127.0.0.1 and localhost, and writes it and its key over
    /// [`Self::cert_path`] and [`Self::key_path`].
    pub fn issue(&self, name: &str, serial: u64) -> Leaf {
        self.issue_for(&["127.0.0.1", "localhost"], name, serial)
    }

    /// [`Self::issue`] for the host names and IP addresses `hosts`.
    #[allow(clippy::unwrap_used)]
    pub fn issue_for(&self, hosts: &[&str], name: &str, serial: u64) -> Leaf {
        let hosts = hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(hosts).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.cert_path(), cert.pem()).unwrap();
        std::fs::write(self.key_path(), key.serialize_pem()).unwrap();
        Leaf {
            der: cert.der().to_vec(),
            spki_sha256: base64::engine::general_purpose::STANDARD
                .encode(Sha256::digest(key.public_key_der())),
        }
    }
}

impl Pki {
    /// `parlor-server --tls-cert/--tls-key` with the certificate issued
    /// last: https and wss at `https://127.0.0.1:PORT`.
    pub async fn server(&self) -> anyhow::Result<Server> {
        let cert = self.cert_path();
        let key = self.key_path();
        let server = Server::start(&[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ])
        .await?;
        anyhow::ensure!(server.base.starts_with("https://"), "{}", server.base);
        Ok(server)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
