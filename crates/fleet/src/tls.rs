//! TLS of the link: the hub serves a certificate from files; the member trusts exactly the CA in
//! its configured file (no system roots: a public CA must not be able to stand in for the hub).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// The hub's server configuration from a PEM certificate chain and key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, Error> {
    let tls = |reason: String| Error::Tls { reason };
    let certs = CertificateDer::pem_slice_iter(&read(cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("{}: {e}", cert_file.display())))?;
    if certs.is_empty() {
        return Err(tls(format!("{}: no certificate", cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
        .map_err(|e| tls(format!("{}: {e}", key_file.display())))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls(format!("the certificate and key do not go together: {e}")))?;
    Ok(Arc::new(config))
}

/// The hub's serving certificate, reloaded when its files change (a renewed Secret: cert-manager,
/// or `kubectl create secret tls … --dry-run -o yaml | kubectl apply -f -`, which the kubelet
/// swaps into the mounted volume). Checked at each new link by the files' modification times and
/// sizes, so a renewal needs no restart and costs two `stat`s per link. A pair that does not
/// load (the certificate written before its key) keeps the previous one, tried again at the
/// next link; links already up keep the certificate they were made with.
pub struct ServingCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<(Stamp, Arc<ServerConfig>)>,
}

/// What identifies a version of the two files.
type Stamp = Option<[(SystemTime, u64); 2]>;

fn stamp(cert_file: &Path, key_file: &Path) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(cert_file)?, one(key_file)?])
}

impl ServingCertificate {
    /// Loads the pair now: an error when it does not load (the hub does not start without it).
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, Error> {
        let stamp = stamp(cert_file, key_file);
        let config = server_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: Mutex::new((stamp, config)),
        })
    }

    /// The configuration for a new link: reloaded first when the files changed.
    pub fn config(&self) -> Arc<ServerConfig> {
        let now = stamp(&self.cert_file, &self.key_file);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != current.0 {
            match server_config(&self.cert_file, &self.key_file) {
                Ok(config) => {
                    tracing::info!(cert = %self.cert_file.display(), "fleet hub: serving certificate reloaded");
                    *current = (now, config);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet hub: the changed serving certificate does not load; keeping the previous one");
                }
            }
        }
        current.1.clone()
    }
}

/// The member's client configuration: only the CA(s) in `ca_file` are trusted.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, Error> {
    let tls = |reason: String| Error::Tls { reason };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(ca_file)?) {
        let cert = cert.map_err(|e| tls(format!("{}: {e}", ca_file.display())))?;
        roots
            .add(cert)
            .map_err(|e| tls(format!("{}: {e}", ca_file.display())))?;
    }
    if roots.is_empty() {
        return Err(tls(format!("{}: no CA certificate", ca_file.display())));
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
