//! The certificates a TLS endpoint serves, as this node sees them: for node-collector, the
//! apiserver's. An apiserver whose serving certificate (or its CA) expired cuts every kubelet,
//! controller and user off at once, and one about to expire is that outage announced; checking
//! from the node also catches a load balancer or proxy in front of the apiserver serving an
//! older certificate than the apiserver itself.
//!
//! The chain is read from the handshake and then refused: the handshake never completes, so no
//! byte of a request ever reaches a peer kdiag has not verified. Only expiry matters here, not
//! trust (the agent's own client verifies the apiserver as usual).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};

/// One certificate of a served chain (leaf first).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedCertificate {
    pub subject: String,
    pub issuer: String,
    pub not_after: Timestamp,
}

impl ServedCertificate {
    pub fn to_json(&self, now: Timestamp) -> Value {
        json!({
            "subject": self.subject,
            "issuer": self.issuer,
            "notAfter": self.not_after.to_string(),
            "expiresInSeconds": self.not_after.duration_since(now).as_secs(),
        })
    }
}

/// What node-collector reports under `apiserverCertificate`: the address and the chain it
/// serves, or why it could not be read.
pub async fn apiserver_certificate(url: Option<&str>, within: Duration) -> Value {
    let Some(url) = url else {
        return json!({"error": "the agent was not given the apiserver's address (its client configuration has none)"});
    };
    // A client's URL as kube shows it ends in "/"; the address reads better without.
    let url = url.trim_end_matches('/');
    match served_chain(url, within).await {
        Ok(chain) => {
            let now = Timestamp::now();
            json!({
                "address": url,
                "chain": chain.iter().map(|c| c.to_json(now)).collect::<Vec<_>>(),
            })
        }
        Err(e) => json!({"address": url, "error": e}),
    }
}

/// The chain `url` (`https://host[:port]`) serves, leaf first, within `within`.
pub async fn served_chain(url: &str, within: Duration) -> Result<Vec<ServedCertificate>, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} names no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = ServerName::try_from(host.clone())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordChain {
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
        chain: Mutex::default(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        // Fails by design once the chain is recorded (see RecordChain).
        let refused = connector.connect(name, tcp).await.err();
        Ok::<_, String>(refused)
    };
    let refused = tokio::time::timeout(within, handshake)
        .await
        .map_err(|_| {
            format!(
                "{host}:{port} did not finish a TLS handshake within {} s",
                within.as_secs()
            )
        })??;
    let chain = std::mem::take(&mut *recorder.chain.lock().unwrap_or_else(|e| e.into_inner()));
    if chain.is_empty() {
        return Err(match refused {
            Some(e) => format!("TLS handshake with {host}:{port}: {e}"),
            None => format!("{host}:{port} presented no certificate"),
        });
    }
    chain.iter().map(|der| parse(der, &host)).collect()
}

fn parse(der: &[u8], host: &str) -> Result<ServedCertificate, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("{host} served a certificate that does not parse: {e}"))?;
    Ok(ServedCertificate {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: Timestamp::from_second(cert.validity().not_after.timestamp())
            .map_err(|e| format!("{host}'s certificate has an expiry out of range: {e}"))?,
    })
}

/// A verifier that keeps the served chain and refuses it.
#[derive(Debug)]
struct RecordChain {
    schemes: Vec<SignatureScheme>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for RecordChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().unwrap_or_else(|e| e.into_inner());
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Err(rustls::Error::General(
            "kdiag only reads the served chain; it does not trust it".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not verifying".into()))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not verifying".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A TLS server on 127.0.0.1 serving a leaf (expiring on `leaf_until`) signed by a CA; returns
    /// its URL and a receiver of what each connection's handshake ended in.
    async fn server(
        leaf_until: (i32, u8, u8),
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
    ) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "test-apiserver");
        leaf.not_after = rcgen::date_time_ymd(leaf_until.0, leaf_until.1, leaf_until.2);
        let leaf = leaf.signed_by(&key, &issuer).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let outcome = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let mut byte = [0u8; 1];
                        let _ = tls.read(&mut byte).await;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(outcome);
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn the_served_leaf_and_its_ca_are_read_and_the_handshake_is_refused() {
        let (url, mut handshakes) = server((2025, 1, 1)).await;
        let chain = served_chain(&url, Duration::from_secs(5)).await.unwrap();
        assert_eq!(chain.len(), 2, "{chain:?}");
        assert_eq!(chain[0].subject, "CN=test-apiserver");
        assert_eq!(chain[0].issuer, "CN=test-ca");
        assert_eq!(chain[0].not_after.to_string(), "2025-01-01T00:00:00Z");
        assert_eq!(chain[1].subject, "CN=test-ca");
        let outcome = handshakes.recv().await.unwrap();
        assert!(
            outcome.is_err(),
            "the client refused the server's certificate, so no session was established"
        );

        let report = apiserver_certificate(Some(&url), Duration::from_secs(5)).await;
        assert_eq!(report["address"], url.as_str());
        assert!(report["chain"][0]["expiresInSeconds"].as_i64().unwrap() < 0);
    }

    #[tokio::test]
    async fn an_address_with_nothing_listening_or_no_address_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = served_chain(&url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.starts_with("connecting to 127.0.0.1:"), "{e}");
        let report = apiserver_certificate(None, Duration::from_secs(5)).await;
        assert!(
            report["error"]
                .as_str()
                .unwrap()
                .contains("not given the apiserver's address"),
            "{report}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_speaks_no_tls_is_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut tcp, _)) = listener.accept().await {
                let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let e = served_chain(&url, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.starts_with("TLS handshake with 127.0.0.1:"), "{e}");
    }
}
