//! TLS of the link: the hub serves a certificate from files; the member trusts exactly the CA in
//! its configured file (no system roots: a public CA must not be able to stand in for the hub).

use std::path::Path;
use std::sync::Arc;

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
