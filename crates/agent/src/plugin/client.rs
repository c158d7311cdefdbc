//! Calling an HTTP plugin: one POST of the whole Abnormal, bounded in time and size, with
//! connection errors retried a few times. Every failure names the address and what happened.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use kdiag_api::Abnormal;
use kdiag_pipeline::protocol::check_protected_fields;
use serde_json::Value;

use super::clients::Clients;

/// The most a plugin may answer, as Kube Diagnoser allowed.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Connection attempts before giving up (nothing was sent when a connection fails, so retrying
/// is safe even for a recoverer).
const CONNECT_ATTEMPTS: usize = 3;
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// Between connection attempts: 200 ms, then 400 ms.
fn connect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_BACKOFF)
        .with_factor(2.0)
        .with_max_times(CONNECT_ATTEMPTS - 1)
}

/// Where and how to call one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The URL called; its host is the name certificates are checked against.
    pub url: String,
    /// Connect here instead of resolving the URL's host (a Service resolved to a pod address).
    pub connect_to: Option<SocketAddr>,
    /// PEM CAs for https; None means the system's roots.
    pub ca_pem: Option<String>,
    pub bearer_token: Option<String>,
    pub timeout: Duration,
}

/// Why a plugin call failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PluginError {
    #[error("could not connect to {url} after {attempts} attempts: {reason}")]
    Connect {
        url: String,
        attempts: u32,
        reason: String,
    },
    #[error(
        "{url} did not answer within {timeout:?} (raise the registration's timeoutSeconds if it needs longer)"
    )]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered HTTP {code}: {body}")]
    Status {
        url: String,
        code: u16,
        body: String,
    },
    #[error(
        "{url} answered more than {limit} bytes; a plugin must return the Abnormal within 2 MiB"
    )]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered something that is not an Abnormal in JSON: {reason}")]
    InvalidJson { url: String, reason: String },
    #[error("{url} changed {field}, which a plugin must return unchanged")]
    ChangedProtectedField { url: String, field: String },
    #[error("{url}: {reason}")]
    Setup { url: String, reason: String },
}

impl PluginError {
    /// Only a call that sent nothing is worth repeating: a connection that was never made. A
    /// plugin that answered, or took the request and did not answer in time, may have acted.
    pub fn category(&self) -> kdiag_pipeline::Category {
        match self {
            PluginError::Connect { .. } => kdiag_pipeline::Category::Transient,
            _ => kdiag_pipeline::Category::Permanent,
        }
    }

    /// A bounded label for error metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PluginError::Connect { .. } => "plugin_connect",
            PluginError::Timeout { .. } => "plugin_timeout",
            PluginError::Status { .. } => "plugin_status",
            PluginError::TooLarge { .. } => "plugin_too_large",
            PluginError::InvalidJson { .. } => "plugin_invalid_json",
            PluginError::ChangedProtectedField { .. } => "plugin_protocol",
            PluginError::Setup { .. } => "plugin_setup",
        }
    }
}

/// What makes two plugin clients different: the CA bundle, and a host pinned to an address.
type ClientKey = (Option<String>, Option<(String, SocketAddr)>);

/// The header that names one recovery decision: the same value on every request for the same
/// step of the same Abnormal, so a plugin can tell a repeat from a new request.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The idempotency key of `abnormal`'s step `label` in `stage`: its uid (a recreated Abnormal is a
/// new decision), the stage and the step's registration.
pub fn idempotency_key(abnormal: &Abnormal, stage: kdiag_api::Stage, label: &str) -> String {
    format!(
        "{}/{}/{label}",
        abnormal.metadata.uid.as_deref().unwrap_or_default(),
        stage.as_str()
    )
}

/// Calls plugins. Keeps one HTTP client per TLS setup, so connections are reused (bounded: see
/// `clients`).
#[derive(Default)]
pub struct PluginClient {
    clients: Mutex<Clients<ClientKey, reqwest::Client>>,
}

impl PluginClient {
    /// POSTs `abnormal` and returns what the plugin sent back, checked against the protocol.
    /// A recovery carries `idempotency_key` in the [`IDEMPOTENCY_KEY`] header (docs/plugins.md).
    pub async fn call(
        &self,
        endpoint: &Endpoint,
        abnormal: &Abnormal,
        idempotency_key: Option<&str>,
    ) -> Result<Abnormal, PluginError> {
        let url = &endpoint.url;
        let request = serde_json::to_value(abnormal).map_err(|e| PluginError::Setup {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        // Bytes: each attempt shares the body instead of copying it.
        let body =
            bytes::Bytes::from(
                serde_json::to_vec(&request).map_err(|e| PluginError::Setup {
                    url: url.clone(),
                    reason: e.to_string(),
                })?,
            );
        let client = self.client_for(endpoint)?;

        let mut attempts: u32 = 0;
        let send = || {
            attempts += 1;
            let mut req = client
                .post(url)
                .timeout(endpoint.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &endpoint.bearer_token {
                req = req.bearer_auth(token);
            }
            if let Some(key) = idempotency_key {
                req = req.header(IDEMPOTENCY_KEY, key);
            }
            req.send()
        };
        let response = send
            .retry(connect_backoff())
            .sleep(tokio::time::sleep)
            // Only a failed connection is retried: nothing was sent, so it is safe even for a
            // recoverer. A timeout may have reached the plugin, so it is not.
            .when(|e: &reqwest::Error| e.is_connect() && !e.is_timeout())
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    PluginError::Timeout {
                        url: url.clone(),
                        timeout: endpoint.timeout,
                    }
                } else {
                    PluginError::Connect {
                        url: url.clone(),
                        attempts,
                        reason: error_chain(&e),
                    }
                }
            })?;

        let code = response.status();
        let bytes = read_capped(response, MAX_RESPONSE_BYTES, url, endpoint.timeout).await?;
        if code != reqwest::StatusCode::OK {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                .trim()
                .to_owned();
            return Err(PluginError::Status {
                url: url.clone(),
                code: code.as_u16(),
                body: text,
            });
        }
        let mut returned: Value =
            serde_json::from_slice(&bytes).map_err(|e| PluginError::InvalidJson {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if !returned.is_object() {
            return Err(PluginError::InvalidJson {
                url: url.clone(),
                reason: "the body is not a JSON object".into(),
            });
        }
        // A reply may carry only what changed (status alone), as Kube Diagnoser allowed.
        kdiag_pipeline::protocol::complete_reply(&request, &mut returned);
        check_protected_fields(&request, &returned).map_err(|e| match e {
            kdiag_pipeline::Error::ChangedProtectedField { field } => {
                PluginError::ChangedProtectedField {
                    url: url.clone(),
                    field,
                }
            }
            other => PluginError::InvalidJson {
                url: url.clone(),
                reason: other.to_string(),
            },
        })?;
        serde_json::from_value(returned).map_err(|e| PluginError::InvalidJson {
            url: url.clone(),
            reason: e.to_string(),
        })
    }

    fn client_for(&self, endpoint: &Endpoint) -> Result<reqwest::Client, PluginError> {
        let host = reqwest::Url::parse(&endpoint.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or_else(|| PluginError::Setup {
                url: endpoint.url.clone(),
                reason: "not a valid URL".into(),
            })?;
        let key = (
            endpoint.ca_pem.clone(),
            endpoint.connect_to.map(|a| (host.clone(), a)),
        );
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get_or_try_insert(&key, Instant::now(), || Self::build_client(endpoint, &host))
    }

    fn build_client(endpoint: &Endpoint, host: &str) -> Result<reqwest::Client, PluginError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Plugins are addressed explicitly; a proxy from the environment would be a surprise.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &endpoint.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                PluginError::Setup {
                    url: endpoint.url.clone(),
                    reason: format!("the CA bundle is not valid PEM: {e}"),
                }
            })?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some(addr) = endpoint.connect_to {
            builder = builder.resolve(host, addr);
        }
        builder.build().map_err(|e| PluginError::Setup {
            url: endpoint.url.clone(),
            reason: error_chain(&e),
        })
    }
}

/// Reads a body, failing as soon as it passes `limit` bytes or stalls past `timeout`.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
    url: &str,
    timeout: Duration,
) -> Result<Vec<u8>, PluginError> {
    if response
        .content_length()
        .is_some_and(|n| n as usize > limit)
    {
        return Err(PluginError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    let mut body = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => {
                return Err(PluginError::Timeout {
                    url: url.to_owned(),
                    timeout,
                });
            }
            Err(e) => {
                return Err(PluginError::Connect {
                    url: url.to_owned(),
                    attempts: 1,
                    reason: format!("reading the answer: {}", error_chain(&e)),
                });
            }
        };
        if body.len() + chunk.len() > limit {
            return Err(PluginError::TooLarge {
                url: url.to_owned(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
}

/// An error with its causes, which is where reqwest keeps "connection refused".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn connections_are_retried_after_200_then_400_ms() {
        // (The factor is an f32: microseconds of rounding.)
        let delays: Vec<u128> = connect_backoff().build().map(|d| d.as_millis()).collect();
        assert_eq!(delays, [200, 400]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_tried_three_times_and_named() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/collect");
        let endpoint = Endpoint {
            url: url.clone(),
            connect_to: None,
            ca_pem: None,
            bearer_token: None,
            timeout: Duration::from_secs(5),
        };
        let started = std::time::Instant::now();
        let err = PluginClient::default()
            .call(&endpoint, &Abnormal::new("a", Default::default()), None)
            .await
            .unwrap_err();
        match err {
            PluginError::Connect {
                url: u, attempts, ..
            } => assert_eq!((u, attempts), (url, 3)),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "backed off between attempts"
        );
    }
}
