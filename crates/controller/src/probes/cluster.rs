//! The controller's look at the cluster for a failing checker: the message is classified to a
//! component and a fault (`kdiag_diagnosers::probe_failure`), the objects that component is
//! made of are read here (the IO), and the pure judge names the root cause. This is what
//! diagnoses a cluster-level check (DNS, the apiserver, etcd) that names no node and has no
//! checker pod, and it leads any node's diagnosis of the others.

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kdiag_api::ProbeCheckerStatus;
use kdiag_diagnosers::probe_failure::{
    self, Classification, ClusterFacts, Component, DNS_SERVICE, Fault, Judgement, ServiceFacts,
};
use kube::Client;
use kube::api::{Api, ListParams};

/// Classifies the checker's failure and judges it on what the apiserver says now; None when the
/// message is of no known family (then only the Abnormals' processors diagnose it).
pub async fn diagnose(
    client: &Client,
    probe: &str,
    checker: &ProbeCheckerStatus,
) -> Option<(Classification, Judgement)> {
    let class = probe_failure::classify(&checker.name, &checker.message)?;
    let facts = read(client, &class).await;
    let judgement = probe_failure::judge(probe, &checker.name, &checker.message, &class, &facts);
    Some((class, judgement))
}

/// Reads what the judge needs for this class. A read that fails leaves its fact out (the judge
/// then says less) rather than failing the trigger.
async fn read(client: &Client, class: &Classification) -> ClusterFacts {
    let mut facts = ClusterFacts::default();
    match (class.fault, class.component) {
        (Fault::DnsLookupFailed, _) | (_, Component::ClusterDns) => {
            let by_ip = match host(&class.endpoint) {
                Some(ip) => service_by_ip(client, ip).await,
                None => None,
            };
            facts.service = match by_ip {
                Some(s) => Some(s),
                None => service(client, DNS_SERVICE.0, DNS_SERVICE.1).await,
            };
        }
        (Fault::ConnectionRefused, Component::Endpoint) => match host(&class.endpoint) {
            // A Service's DNS name (a native check's URL, usually): that Service.
            Some(h) if h.parse::<std::net::IpAddr>().is_err() => {
                if let Some((ns, name)) = service_named(h) {
                    facts.service = service(client, ns, name).await;
                }
            }
            Some(ip) => {
                facts.service = service_by_ip(client, ip).await;
                if facts.service.is_none() {
                    facts.pod = pod_by_ip(client, ip).await;
                }
            }
            None => {}
        },
        (_, Component::Apiserver | Component::Etcd) => {
            let request = http::Request::get("/readyz?verbose").body(Vec::new());
            facts.readyz = Some(match request {
                Ok(r) => client.request_text(r).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            });
        }
        _ => {}
    }
    facts
}

/// The host of `HOST:PORT` (or `[v6]:PORT`).
fn host(addr: &str) -> Option<&str> {
    let (h, _) = addr.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    (!h.is_empty()).then_some(h)
}

/// `(namespace, name)` of a Service's DNS name, `NAME.NAMESPACE.svc` with or without the
/// cluster domain after it; None for any other host.
fn service_named(host: &str) -> Option<(&str, &str)> {
    let mut labels = host.trim_end_matches('.').split('.');
    let (name, ns, svc) = (labels.next()?, labels.next()?, labels.next()?);
    (svc == "svc" && !name.is_empty() && !ns.is_empty()).then_some((ns, name))
}

/// A Service, its Endpoints and the pods its selector matches; Some with no Service when it
/// does not exist, None when it could not be read.
async fn service(client: &Client, ns: &str, name: &str) -> Option<ServiceFacts> {
    let key = format!("{ns}/{name}");
    let svc = match Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(service = %key, error = %e, "probe diagnosis: cannot read the Service");
            return None;
        }
    };
    let Some(svc) = svc else {
        return Some(ServiceFacts {
            key,
            ..Default::default()
        });
    };
    Some(backed(client, key, svc).await)
}

async fn backed(client: &Client, key: String, svc: Service) -> ServiceFacts {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await
        .ok()
        .flatten();
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods = if selector.is_empty() {
        Vec::new()
    } else {
        let labels = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&labels))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    };
    ServiceFacts {
        key,
        service: Some(svc),
        endpoints,
        pods,
    }
}

/// The Service whose ClusterIP is `ip`, with what backs it.
async fn service_by_ip(client: &Client, ip: &str) -> Option<ServiceFacts> {
    let list = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "probe diagnosis: cannot list Services"))
        .ok()?;
    let svc = list
        .items
        .into_iter()
        .find(|s| s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(ip))?;
    let key = format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or_default(),
        svc.metadata.name.as_deref().unwrap_or_default()
    );
    Some(backed(client, key, svc).await)
}

async fn pod_by_ip(client: &Client, ip: &str) -> Option<Pod> {
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_dns_name_names_its_namespace_and_name() {
        assert_eq!(service_named("web.shop.svc"), Some(("shop", "web")));
        assert_eq!(
            service_named("web.shop.svc.cluster.local."),
            Some(("shop", "web"))
        );
        assert_eq!(service_named("web.shop"), None);
        assert_eq!(service_named("web.shop.example.com"), None);
        assert_eq!(service_named("10.0.0.7"), None);
    }

    #[test]
    fn the_host_of_an_address_drops_its_port_and_brackets() {
        assert_eq!(host("web.shop.svc:80"), Some("web.shop.svc"));
        assert_eq!(host("[fd00::1]:8443"), Some("fd00::1"));
        assert_eq!(host("10.0.0.7"), None);
    }
}
