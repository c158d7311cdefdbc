//! An admission webhook that denies pods, served from the test's (or the bench's) own process,
//! and the guard that removes its configuration: shared by `triage_workloads/admission.rs` and
//! the benchmark's workload classes (`workloads::refused_by_admission_webhooks`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster};
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the denying webhook answers.
pub const DENIAL: &str = "kdiag test policy: pods labelled app=denied are not admitted here";

/// Deletes the webhook configuration when dropped, also after a failed assertion: a leftover
/// configuration with failurePolicy Fail would refuse pods until someone removes it.
pub struct WebhookConfiguration<'a> {
    pub cluster: &'a Cluster,
    pub name: String,
}

impl Drop for WebhookConfiguration<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl()
            .args([
                "delete",
                "validatingwebhookconfiguration",
                self.name.as_str(),
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

/// An HTTPS server on 127.0.0.1 that denies every AdmissionReview it gets with [`DENIAL`];
/// returns its port and the CA to trust. HTTP/1.1, one request per connection: all the
/// apiserver needs.
pub async fn denying_webhook() -> (u16, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let serving = kdiag_controller::webhook::cert::generate(&["127.0.0.1".into()], now)
        .expect("a certificate for 127.0.0.1");
    let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Some(review) = read_request(&mut tls).await else {
                    return;
                };
                let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": review["request"]["uid"], "allowed": false,
                        "status": {"code": 403, "message": DENIAL}}})
                .to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, serving.ca_pem)
}

/// The JSON body of one HTTP/1.1 request (its Content-Length).
async fn read_request(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        while buf.len() < end + 4 + length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return serde_json::from_slice(&buf[end + 4..end + 4 + length]).ok();
    }
}

/// One webhook of the configuration: pods, CREATE, this namespace's label and one `app`.
pub fn webhook(name: &str, ns: &str, app: &str, client_config: Value) -> Value {
    json!({"name": name, "clientConfig": client_config,
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
            "resources": ["pods"], "scope": "Namespaced"}],
        "namespaceSelector": {"matchLabels": {"kdiag.test/webhook-scope": ns}},
        "objectSelector": {"matchLabels": {"app": app}},
        "failurePolicy": "Fail", "sideEffects": "None", "timeoutSeconds": 5,
        "admissionReviewVersions": ["v1"]})
}

/// Polls a dry-run create of a pod labelled `app` until the apiserver refuses it with a message
/// containing `needle`: the apiserver picks a new webhook configuration up a moment later, and
/// a pod created before that would get through. Panics after 2 minutes.
pub async fn wait_refused(pods: &Api<Pod>, app: &str, needle: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "probe-", "labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": BUSYBOX_IMAGE, "command": ["true"]}]}}))
    .expect("a valid pod");
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let begin = Instant::now();
    loop {
        match pods.create(&params, &pod).await {
            Err(e) if e.to_string().contains(needle) => return,
            _ => {}
        }
        assert!(
            begin.elapsed() < Duration::from_secs(120),
            "the webhook for app={app} not in effect within 2 min"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
