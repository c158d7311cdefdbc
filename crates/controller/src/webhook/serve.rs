//! The webhook's HTTPS listener: TLS with the certificate from the Secret (swapped in place when
//! it is renewed), HTTP/1.1, `POST /validate` only. Bodies are capped like the other endpoints'.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use super::{PATH, Webhook, cert::Serving};
use crate::Error;

/// A rustls server configuration for `serving`.
pub fn tls_config(serving: &Serving) -> Result<Arc<ServerConfig>, Error> {
    let fail = |reason: String| Error::WebhookCertificate { reason };
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("the certificate in the Secret: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes())
        .map_err(|e| fail(format!("the key in the Secret: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| fail(format!("the certificate and key do not go together: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A bound listener; its accept loop runs until the shutdown token is cancelled.
pub struct Server {
    tls: Arc<RwLock<Arc<ServerConfig>>>,
}

impl Server {
    pub async fn bind(
        addr: std::net::SocketAddr,
        tls: Arc<ServerConfig>,
        webhook: Arc<Webhook>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::WebhookListen { addr, source })?;
        tracing::info!(address = %addr, "admission webhook listening (HTTPS {PATH})");
        let tls = Arc::new(RwLock::new(tls));
        let current = tls.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let config = current.read().unwrap_or_else(|e| e.into_inner()).clone();
                let webhook = webhook.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let webhook = webhook.clone();
                        async move { Ok::<_, Infallible>(handle(&webhook, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { tls })
    }

    /// Serves `config` to new connections from now on.
    pub fn set_tls(&self, config: Arc<ServerConfig>) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status, s: &str| reply(status, "text/plain; charset=utf-8", s.as_bytes().to_vec());
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            "kdiag's admission webhook serves POST /validate only",
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview to /validate",
        );
    }
    let limit = kdiag_runtime::server::MAX_REQUEST_BYTES as usize;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("the body: {e}")),
    };
    match webhook.review(&body).await {
        Ok(answer) => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_vec(&answer).unwrap_or_default(),
        ),
        Err(why) => text(StatusCode::BAD_REQUEST, &why),
    }
}
