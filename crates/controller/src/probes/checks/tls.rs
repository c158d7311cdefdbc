//! Certificate expiry of endpoints (the certificate they serve) and PEM files.

use std::sync::Arc;
use std::time::Duration;

use kdiag_api::TlsCheck;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::Outcome;
use crate::Error;

pub async fn check(c: &TlsCheck) -> Outcome {
    let warn_days = c.warn_days.unwrap_or(30);
    let error_days = c.error_days.unwrap_or(7);
    if c.endpoints.is_empty() && c.files.is_empty() {
        return Outcome {
            status: kdiag_api::CheckerStatus::Unknown,
            message: "tls check with no endpoints or files".into(),
        };
    }
    let mut worst: Option<(i64, String)> = None;
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for endpoint in &c.endpoints {
        match served_certificate(endpoint).await {
            Ok(der) => consider(&der, endpoint, &mut worst, &mut problems, &mut seen),
            Err(e) => problems.push(format!("{endpoint}: {e}")),
        }
    }
    for file in &c.files {
        match tokio::fs::read(file).await {
            Ok(pem) => {
                let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect();
                if certs.is_empty() {
                    problems.push(format!("{file}: no PEM certificate in it"));
                }
                for cert in certs {
                    match cert {
                        Ok(der) => consider(&der, file, &mut worst, &mut problems, &mut seen),
                        Err(e) => problems.push(format!("{file}: not valid PEM: {e}")),
                    }
                }
            }
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Outcome::error(problems.join("; "));
    }
    let Some((days, what)) = worst else {
        return Outcome::error("no certificate found");
    };
    if days < error_days {
        Outcome::error(if days < 0 {
            format!("{what} expired {} days ago; renew it", -days)
        } else {
            format!("{what} expires in {days} days; renew it")
        })
    } else if days < warn_days {
        Outcome::warn(format!("{what} expires in {days} days"))
    } else {
        Outcome::pass(format!(
            "{} certificates checked; the first to expire, {what}, has {days} days left",
            seen.len()
        ))
    }
}

fn consider(
    der: &[u8],
    place: &str,
    worst: &mut Option<(i64, String)>,
    problems: &mut Vec<String>,
    seen: &mut Vec<String>,
) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.timestamp();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            let days = (not_after - now).div_euclid(86400);
            let what = format!("the certificate of {place} ({})", cert.subject());
            seen.push(what.clone());
            if worst.as_ref().is_none_or(|(d, _)| days < *d) {
                *worst = Some((days, what));
            }
        }
        Err(e) => problems.push(format!("{place}: not a parsable certificate: {e}")),
    }
}

/// The leaf certificate an endpoint serves, accepted whatever it is: this check is about its
/// expiry, not about trusting it.
async fn served_certificate(endpoint: &str) -> Result<Vec<u8>, Error> {
    const WITHIN: Duration = Duration::from_secs(5);
    let host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']'))
        .unwrap_or(endpoint)
        .to_owned();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsSetup {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(WITHIN, tokio::net::TcpStream::connect(endpoint))
        .await
        .map_err(|_| Error::TlsConnectTimeout {
            seconds: WITHIN.as_secs(),
        })?
        .map_err(|source| Error::TlsConnect { source })?;
    let name = ServerName::try_from(host).map_err(|e| Error::TlsServerName {
        reason: e.to_string(),
    })?;
    let tls = tokio::time::timeout(WITHIN, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::TlsHandshakeTimeout {
            seconds: WITHIN.as_secs(),
        })?
        .map_err(|source| Error::TlsHandshake { source })?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or(Error::TlsNoCertificate)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn check_files(files: &[&std::path::Path]) -> Outcome {
        check(&TlsCheck {
            files: files.iter().map(|f| f.display().to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    #[tokio::test]
    async fn a_file_without_a_certificate_or_with_a_broken_one_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, broken) = (dir.path().join("empty.pem"), dir.path().join("broken.pem"));
        std::fs::write(&empty, "just text\n").unwrap();
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let out = check_files(&[&empty]).await;
        assert_eq!(out.status, kdiag_api::CheckerStatus::Error);
        assert_eq!(
            out.message,
            format!("{}: no PEM certificate in it", empty.display())
        );
        let out = check_files(&[&broken]).await;
        assert!(
            out.message
                .starts_with(&format!("{}: not valid PEM: ", broken.display())),
            "{}",
            out.message
        );
        let missing = dir.path().join("missing.pem");
        let out = check_files(&[&missing]).await;
        assert!(
            out.message.starts_with(&format!("{}: ", missing.display())),
            "{}",
            out.message
        );
    }
}
