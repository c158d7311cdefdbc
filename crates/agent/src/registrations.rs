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

use crate::plugin::Endpoint;

/// Default seconds one processor call may take, as in Kube Diagnoser.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 30;

/// What a registration resolves to.
pub enum Target {
    Builtin(Arc<dyn Processor>, Duration),
    Http(Endpoint),
}

/// Resolves a registration into a built-in or an HTTP endpoint. Errors say what is wrong with the
/// registration and how to fix it.
pub async fn resolve(
    client: &Client,
    builtins: &Builtins,
    registration: &NamespacedName,
    stage: Stage,
    spec: &ProcessorEndpoint,
) -> Result<Target, String> {
    let kind = kind_of(stage);
    let timeout = Duration::from_secs(
        spec.timeout_seconds
            .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
            .max(1) as u64,
    );
    if spec.is_builtin() {
        return builtins.get(&registration.name).map(|p| Target::Builtin(p, timeout)).ok_or_else(|| {
            format!(
                "{kind} {registration} has no externalIP, externalPort or service, so it names a built-in processor, but kdiag has no built-in called {:?}; built-ins are: {}",
                registration.name,
                builtins.names().join(", ")
            )
        });
    }
    let scheme = spec
        .scheme
        .as_deref()
        .unwrap_or("http")
        .to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "{kind} {registration} has scheme {scheme:?}; use http or https"
        ));
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
            let port = port_number(port).ok_or_else(|| {
                format!(
                    "{kind} {registration} has externalPort {port:?}, which is not a port number"
                )
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
            let addr = service_address(client, &svc_ns, &svc.name, svc.port)
                .await
                .map_err(|e| format!("{kind} {registration}: {e}"))?;
            (
                format!("{}.{svc_ns}.svc:{}", svc.name, svc.port),
                Some(addr),
            )
        }
        (_, _, Some(_)) => {
            return Err(format!(
                "{kind} {registration} sets both service and externalIP/externalPort; set one of them"
            ));
        }
        _ => {
            return Err(format!(
                "{kind} {registration} sets only one of externalIP and externalPort; set both, or neither for a built-in"
            ));
        }
    };
    let mut ca_pem = spec
        .tls
        .as_ref()
        .filter(|t| !t.ca_bundle.is_empty())
        .map(|t| t.ca_bundle.clone());
    if let Some(r) = spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        ca_pem = Some(
            secret_value(client, ns, r)
                .await
                .map_err(|e| format!("{kind} {registration}: tls.caSecretRef: {e}"))?,
        );
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
                    .ok_or_else(|| format!("{kind} {registration}: cannot resolve {host}"))?,
            };
            (format!("{name}:{}", addr.port()), Some(addr))
        }
        None => (host, connect_to),
    };
    let bearer_token = match &spec.bearer_token_secret_ref {
        Some(r) => Some(
            secret_value(client, ns, r)
                .await
                .map_err(|e| format!("{kind} {registration}: bearerTokenSecretRef: {e}"))?
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
    ns: &str,
    name: &str,
    port: i32,
) -> Result<SocketAddr, String> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Service {ns}/{name}: {e}"))?;
    let svc_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ports| ports.iter().find(|p| p.port == port).cloned())
        .ok_or_else(|| format!("Service {ns}/{name} has no port {port}"))?;
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("Endpoints of Service {ns}/{name}: {e}"))?;
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
    Err(format!(
        "Service {ns}/{name} has no ready endpoint for port {port}"
    ))
}

async fn secret_value(client: &Client, ns: &str, r: &SecretKeyRef) -> Result<String, String> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&r.name)
        .await
        .map_err(|e| format!("reading Secret {ns}/{}: {e} (the agent may read Secrets only in namespaces its Role allows; see docs/security.md)", r.name))?;
    let data = secret.data.unwrap_or_default();
    let value = data
        .get(&r.key)
        .ok_or_else(|| format!("Secret {ns}/{} has no key {:?}", r.name, r.key))?;
    String::from_utf8(value.0.clone())
        .map_err(|_| format!("Secret {ns}/{} key {:?} is not UTF-8 text", r.name, r.key))
}
