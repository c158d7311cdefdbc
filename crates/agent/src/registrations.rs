//! Resolving a processor registration into something to call: a built-in of this binary, or an
//! HTTP endpoint (with its Service address, CA and token read from the cluster).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kdiag_api::plugin::Processor;
use kdiag_api::{NamespacedName, ProcessorEndpoint, SecretKeyRef, Stage};
use kdiag_pipeline::admission::kind_of;
use kdiag_runtime::builtin::Builtins;
use kube::Client;
use kube::api::Api;

use crate::error::{Error, Registration};
use crate::plugin::Endpoint;

/// Default seconds one processor call may take, as in Kube Diagnoser.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = ProcessorEndpoint::DEFAULT_TIMEOUT_SECONDS;

/// What a registration resolves to.
pub enum Target {
    Builtin(Arc<dyn Processor>, Duration),
    Http(Endpoint),
}

/// Resolves a registration into a built-in or an HTTP endpoint. Errors say what is wrong with the
/// registration and how to fix it; [`Error::is_transient`] tells those worth retrying (the
/// apiserver failed to answer, no pod behind the Service is ready yet) from the others.
pub async fn resolve(
    client: &Client,
    builtins: &Builtins,
    registration: &NamespacedName,
    stage: Stage,
    spec: &ProcessorEndpoint,
) -> Result<Target, Error> {
    let reg = Registration::new(kind_of(stage), registration);
    // Kube Diagnoser v0.1.0–v0.1.5's ip/port, read as today's fields.
    let spec = &spec.effective();
    let timeout = Duration::from_secs(spec.timeout() as u64);
    if spec.is_builtin() {
        return builtins
            .get(&registration.name)
            .map(|p| Target::Builtin(p, timeout))
            .ok_or_else(|| Error::UnknownBuiltin {
                registration: reg.clone(),
                name: registration.name.clone(),
                builtins: builtins.names().join(", "),
            });
    }
    let scheme = spec
        .scheme
        .as_deref()
        .unwrap_or("http")
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(Error::UnsupportedScheme {
            registration: reg,
            scheme,
        });
    }
    let path = spec.path.clone().unwrap_or_default();
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let ns = &registration.namespace;

    let (host, connect_to) = match (&spec.external_ip, &spec.external_port, &spec.service) {
        (Some(ip), Some(port), None) => {
            let port = port_number(port).ok_or_else(|| Error::InvalidPort {
                registration: reg.clone(),
                port: format!("{port:?}"),
            })?;
            let host = if ip.contains(':') && !ip.starts_with('[') {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            (format!("{host}:{port}"), None)
        }
        (None, None, Some(svc)) => {
            let svc_ns = if svc.namespace.is_empty() {
                ns.clone()
            } else {
                svc.namespace.clone()
            };
            let addr = service_address(client, &reg, &svc_ns, &svc.name, svc.port).await?;
            (
                format!("{}.{svc_ns}.svc:{}", svc.name, svc.port),
                Some(addr),
            )
        }
        (_, _, Some(_)) => {
            return Err(Error::ServiceAndAddress { registration: reg });
        }
        _ => {
            return Err(Error::HalfAddress { registration: reg });
        }
    };
    let mut ca_pem = spec
        .tls
        .as_ref()
        .filter(|t| !t.ca_bundle.is_empty())
        .map(|t| t.ca_bundle.clone());
    if let Some(r) = spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        ca_pem = Some(secret_value(client, &reg, "tls.caSecretRef", ns, r).await?);
    }
    // A serverName override becomes the URL's host; the connection still goes to the address.
    let (host, connect_to) = match spec
        .tls
        .as_ref()
        .map(|t| t.server_name.as_str())
        .filter(|s| !s.is_empty())
    {
        Some(name) => {
            let addr = match connect_to {
                Some(a) => a,
                None => tokio::net::lookup_host(&host)
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| Error::Unresolvable {
                        registration: reg.clone(),
                        host: host.clone(),
                    })?,
            };
            (format!("{name}:{}", addr.port()), Some(addr))
        }
        None => (host, connect_to),
    };
    let bearer_token = match &spec.bearer_token_secret_ref {
        Some(r) => Some(
            secret_value(client, &reg, "bearerTokenSecretRef", ns, r)
                .await?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Target::Http(Endpoint {
        url: format!("{scheme}://{host}{path}"),
        connect_to,
        ca_pem,
        bearer_token,
        timeout,
    }))
}

fn port_number(p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok().filter(|p| *p > 0),
        IntOrString::String(s) => s.trim().parse().ok().filter(|p: &u16| *p > 0),
    }
}

/// A ready address behind a Service port, found through its Endpoints, so a plugin behind a
/// Service is reachable from a hostNetwork agent without cluster DNS or kube-proxy.
async fn service_address(
    client: &Client,
    reg: &Registration,
    ns: &str,
    name: &str,
    port: i32,
) -> Result<SocketAddr, Error> {
    let service = format!("{ns}/{name}");
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| Error::ReadService {
            registration: reg.clone(),
            service: service.clone(),
            source: Box::new(e),
        })?;
    let svc_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port).cloned())
        .ok_or_else(|| Error::NoServicePort {
            registration: reg.clone(),
            service: service.clone(),
            port,
        })?;
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| Error::ReadEndpoints {
            registration: reg.clone(),
            service: service.clone(),
            source: Box::new(e),
        })?;
    for subset in eps.subsets.unwrap_or_default() {
        let Some(ep_port) = subset.ports.as_ref().and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name == svc_port.name || ports.len() == 1)
                .map(|p| p.port)
        }) else {
            continue;
        };
        if let Some(addr) = subset.addresses.as_ref().and_then(|a| a.first())
            && let Ok(ip) = addr.ip.parse::<std::net::IpAddr>()
        {
            return Ok(SocketAddr::new(ip, ep_port as u16));
        }
    }
    Err(Error::NoReadyEndpoint {
        registration: reg.clone(),
        service,
        port,
    })
}

async fn secret_value(
    client: &Client,
    reg: &Registration,
    field: &'static str,
    ns: &str,
    r: &SecretKeyRef,
) -> Result<String, Error> {
    let secret_name = format!("{ns}/{}", r.name);
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&r.name)
        .await
        .map_err(|e| Error::ReadSecret {
            registration: reg.clone(),
            field,
            secret: secret_name.clone(),
            source: Box::new(e),
        })?;
    let data = secret.data.unwrap_or_default();
    let value = data.get(&r.key).ok_or_else(|| Error::SecretKeyMissing {
        registration: reg.clone(),
        field,
        secret: secret_name.clone(),
        key: r.key.clone(),
    })?;
    String::from_utf8(value.0.clone()).map_err(|_| Error::SecretNotText {
        registration: reg.clone(),
        field,
        secret: secret_name,
        key: r.key.clone(),
    })
}
