//! Probe failures diagnosed to a component: [`classify`] turns a checker's message into a fault
//! and a component; [`judge`] names the root cause from that and from the cluster objects the
//! controller read for it (the DNS Service, its Endpoints and pods; the Service or pod behind an
//! address; the apiserver's readiness checks). Pure: the controller does the reading
//! (`kdiag_controller::probes::cluster`).

pub mod classify;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kdiag_api::{Evidence, RootCause};

pub use classify::{Classification, Component, Fault, classify};

/// The context key the probe trigger writes into the Abnormals it creates: the classification
/// and what the controller found about the cluster.
pub const PROBE_FAILURE: &str = "probeFailure";

/// The DNS Service kubeadm and most installers create, CoreDNS or kube-dns behind it.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// A Service with what backs it, as read from the apiserver.
#[derive(Debug, Clone, Default)]
pub struct ServiceFacts {
    /// namespace/name looked for.
    pub key: String,
    pub service: Option<Service>,
    pub endpoints: Option<Endpoints>,
    /// The pods its selector matches.
    pub pods: Vec<Pod>,
}

/// What the controller read for a classified failure.
#[derive(Debug, Clone, Default)]
pub struct ClusterFacts {
    /// The Service in question: cluster DNS, or the one whose ClusterIP a refused address is.
    pub service: Option<ServiceFacts>,
    /// The pod whose IP a refused address is.
    pub pod: Option<Pod>,
    /// The apiserver's `/readyz?verbose`, or the error asking for it.
    pub readyz: Option<Result<String, String>>,
}

/// The cause, and the nodes to diagnose on because the component's pods run there.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub cause: RootCause,
    pub nodes: Vec<String>,
}

/// The root cause of checker `checker` (of ProbeStatus `probe`, namespace/name) from its
/// classification and the facts read for it.
pub fn judge(
    probe: &str,
    checker: &str,
    message: &str,
    c: &Classification,
    facts: &ClusterFacts,
) -> Judgement {
    let reported = Evidence {
        kind: "ProbeChecker".into(),
        object: format!("probestatus/{probe}"),
        message: format!("checker {checker}: {message}"),
        ..Default::default()
    };
    let on_nodes = if c.nodes.is_empty() {
        String::new()
    } else {
        format!(" on node(s) {}", c.nodes.join(", "))
    };
    let mut nodes = c.nodes.clone();
    let (reason, summary, suggestion, mut evidence): (&str, String, String, Vec<Evidence>) = match (c.fault, c.component) {
        (Fault::SandboxCreationFailed, Component::Cni) => (
            "CNISetupFailed",
            format!(
                "the CNI plugin{}{on_nodes} cannot set up the network of new pod sandboxes: {}",
                if c.plugin.is_empty() { String::new() } else { format!(" {}", c.plugin) },
                c.error
            ),
            "check the CNI plugin's pods and configuration on the node (/etc/cni/net.d, /opt/cni/bin) and its own error above".into(),
            Vec::new(),
        ),
        (Fault::SandboxCreationFailed, _) => (
            "ContainerRuntimeSandboxFailed",
            format!(
                "the container runtime{on_nodes} cannot create pod sandboxes{}: {}",
                if c.endpoint.is_empty() { String::new() } else { format!(" (its socket {})", c.endpoint) },
                c.error
            ),
            "check the runtime service on the node (systemctl status containerd, its socket, crictl info); pods there stay in ContainerCreating until it answers".into(),
            Vec::new(),
        ),
        (Fault::DnsLookupFailed, _) | (_, Component::ClusterDns) => {
            let (reason, summary, suggestion, ev, dns_nodes) = dns(c, facts.service.as_ref());
            nodes.extend(dns_nodes);
            (reason, summary, suggestion, ev)
        }
        (Fault::ConnectionRefused, Component::Endpoint) => {
            let (reason, summary, suggestion, ev, more) = refused(c, facts);
            nodes.extend(more);
            (reason, summary, suggestion, ev)
        }
        (_, Component::Apiserver | Component::Etcd) => control_plane(c, facts.readyz.as_ref(), checker),
        (Fault::NodesFailing, component) => (
            "NodeCheckFailed",
            format!("{} fails{on_nodes}: {}", component_or_checker(component, checker), c.error),
            "diagnose each node: kubectl diag run --node NODE".into(),
            Vec::new(),
        ),
        (fault, component) => (
            match fault {
                Fault::DeadlineExceeded => "ComponentTimeout",
                _ => "ComponentUnreachable",
            },
            format!(
                "{}{on_nodes} {}",
                component_or_checker(component, checker),
                match fault {
                    Fault::DeadlineExceeded => format!("did not answer within the checker's deadline ({})", c.error),
                    _ => format!("refuses connections at {}", c.endpoint),
                }
            ),
            "check that component's pods or service and the path from the probe to it".into(),
            Vec::new(),
        ),
    };
    evidence.push(reported);
    nodes.sort();
    nodes.dedup();
    Judgement {
        cause: RootCause {
            summary,
            reason: reason.into(),
            processor: "kdiag-controller/probe-trigger".into(),
            suggestion,
            evidence,
            ..Default::default()
        },
        nodes,
    }
}

fn component_or_checker(component: Component, checker: &str) -> String {
    match component {
        Component::Checker | Component::Endpoint => format!("what checker {checker} checks"),
        c => c.describe().to_owned(),
    }
}

type Verdict = (&'static str, String, String, Vec<Evidence>, Vec<String>);

fn dns(c: &Classification, facts: Option<&ServiceFacts>) -> Verdict {
    let lookup = if c.name.is_empty() {
        "DNS lookups".to_owned()
    } else {
        format!("lookups of {}", c.name)
    };
    let Some(f) = facts else {
        return (
            "ClusterDNSLookupFailed",
            format!("{lookup} through cluster DNS fail ({})", c.error),
            "check the cluster DNS Service and its pods".into(),
            Vec::new(),
            Vec::new(),
        );
    };
    let Some(svc) = &f.service else {
        return (
            "ClusterDNSServiceMissing",
            format!(
                "{lookup} fail ({}): the cluster DNS Service {} does not exist",
                c.error, f.key
            ),
            "reinstall the cluster DNS add-on (CoreDNS) and its Service".into(),
            vec![Evidence {
                kind: "MissingObject".into(),
                object: format!("service/{}", f.key),
                message: format!("Service {} not found", f.key),
                ..Default::default()
            }],
            Vec::new(),
        );
    };
    let (why, evidence, nodes) = backing(f, svc);
    match why {
        Some(why) => (
            "ClusterDNSNoReadyEndpoints",
            format!("{lookup} fail ({}): the cluster DNS Service {} has no ready endpoint: {why}", c.error, f.key),
            "make the DNS pods ready (kubectl -n kube-system describe pods of the Service; their logs), or fix the Service's selector".into(),
            evidence,
            nodes,
        ),
        None => (
            "ClusterDNSUnreachable",
            format!(
                "{lookup} fail ({}) although the cluster DNS Service {} has ready endpoints: the path from the probe's pod to them (kube-proxy, the CNI, a NetworkPolicy) or the DNS server's own upstream is at fault",
                c.error, f.key
            ),
            "query a DNS pod directly from the probe's node (dig @POD_IP), then check kube-proxy and the CNI there".into(),
            evidence,
            nodes,
        ),
    }
}

fn refused(c: &Classification, facts: &ClusterFacts) -> Verdict {
    if let Some(f) = &facts.service
        && let Some(svc) = &f.service
    {
        let (why, evidence, nodes) = backing(f, svc);
        return match why {
            Some(why) => (
                "ServiceNoReadyEndpoints",
                format!(
                    "connections to {} are refused: it is Service {}, which has no ready endpoint: {why}",
                    c.endpoint, f.key
                ),
                "make the Service's pods ready or fix its selector".into(),
                evidence,
                nodes,
            ),
            None => (
                "EndpointRefused",
                format!(
                    "connections to {} (Service {}) are refused although it has ready endpoints: the Service's targetPort is not where its pods listen",
                    c.endpoint, f.key
                ),
                "compare the Service's targetPort with the container's listening port".into(),
                evidence,
                nodes,
            ),
        };
    }
    if let Some(pod) = &facts.pod {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        return (
            "EndpointRefused",
            format!(
                "nothing listens at {}: it is pod {}/{}{} ({})",
                c.endpoint,
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                node.as_ref()
                    .map(|n| format!(" on node {n}"))
                    .unwrap_or_default(),
                pod_state(pod)
            ),
            "check that the pod's program listens on that port (kubectl diag run --pod)".into(),
            vec![pod_evidence(pod)],
            node.into_iter().collect(),
        );
    }
    (
        "EndpointRefused",
        format!("nothing listens at {}, which is no Service or pod of this cluster", c.endpoint),
        "check the address the checker is configured with, and the program that should listen there".into(),
        Vec::new(),
        Vec::new(),
    )
}

fn control_plane(
    c: &Classification,
    readyz: Option<&Result<String, String>>,
    checker: &str,
) -> (&'static str, String, String, Vec<Evidence>) {
    let (reason, check) = match c.component {
        Component::Etcd => ("EtcdUnavailable", "etcd"),
        _ => ("ApiserverUnavailable", "ping"),
    };
    let fault = match c.fault {
        Fault::ConnectionRefused => format!("refuses connections at {}", c.endpoint),
        _ => format!("did not answer checker {checker} in time ({})", c.error),
    };
    let (now, evidence) = match readyz {
        None => (String::new(), Vec::new()),
        Some(Err(e)) => (
            format!("; the apiserver does not answer kdiag either: {e}"),
            vec![Evidence {
                kind: "Readyz".into(),
                message: e.clone(),
                object: "apiserver/readyz".into(),
                ..Default::default()
            }],
        ),
        Some(Ok(body)) => {
            let line = body
                .lines()
                .find(|l| {
                    l.trim_start_matches(['[', '+', '-', ']'])
                        .starts_with(check)
                })
                .unwrap_or("")
                .trim()
                .to_owned();
            let text = if line.starts_with("[-]") {
                format!("; the apiserver's readiness check says now: {line}")
            } else if line.is_empty() {
                String::new()
            } else {
                format!(
                    "; the apiserver's readiness check passes now ({line}): the fault was transient or is on the path from the checker"
                )
            };
            let failing: Vec<&str> = body.lines().filter(|l| l.starts_with("[-]")).collect();
            let message = if failing.is_empty() {
                line.clone()
            } else {
                failing.join("; ")
            };
            (
                text,
                vec![Evidence {
                    kind: "Readyz".into(),
                    message,
                    object: "apiserver/readyz".into(),
                    ..Default::default()
                }],
            )
        }
    };
    (
        reason,
        format!("{} {fault}{now}", c.component.describe()),
        "check the component's logs and health (kubectl get --raw /readyz?verbose, etcdctl endpoint health)".into(),
        evidence,
    )
}

/// Why a Service has no ready endpoint (None when it has some), its evidence and the nodes of
/// its pods.
fn backing(f: &ServiceFacts, svc: &Service) -> (Option<String>, Vec<Evidence>, Vec<String>) {
    let subsets = f
        .endpoints
        .as_ref()
        .and_then(|e| e.subsets.clone())
        .unwrap_or_default();
    let ready: Vec<String> = subsets
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    let not_ready: Vec<String> = subsets
        .iter()
        .flat_map(|s| s.not_ready_addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect();
    let mut evidence = vec![Evidence {
        kind: "Endpoints".into(),
        object: format!("endpoints/{}", f.key),
        message: match &f.endpoints {
            None => "no Endpoints object".into(),
            Some(_) => format!(
                "{} ready address(es){}, {} not ready{}",
                ready.len(),
                if ready.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ready.join(", "))
                },
                not_ready.len(),
                if not_ready.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", not_ready.join(", "))
                }
            ),
        },
        ..Default::default()
    }];
    let nodes: Vec<String> = f
        .pods
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    evidence.extend(f.pods.iter().take(3).map(pod_evidence));
    if !ready.is_empty() {
        return (None, evidence, nodes);
    }
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let selector_text = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let why = if selector.is_empty() {
        "it has no selector and nothing fills its Endpoints".to_owned()
    } else if f.pods.is_empty() {
        format!("its selector {selector_text} matches no pod")
    } else {
        format!(
            "none of the {} pod(s) its selector {selector_text} matches is ready: {}",
            f.pods.len(),
            f.pods
                .iter()
                .map(|p| format!(
                    "{}{} ({})",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .map(|n| format!(" on node {n}"))
                        .unwrap_or_else(|| " on no node".into()),
                    pod_state(p)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    (Some(why), evidence, nodes)
}

/// A pod's phase and why its containers are not ready, in a few words.
fn pod_state(p: &Pod) -> String {
    let Some(st) = &p.status else {
        return "no status yet".into();
    };
    let mut parts = vec![st.phase.clone().unwrap_or_else(|| "Pending".into())];
    for c in st.container_statuses.iter().flatten() {
        if c.ready {
            continue;
        }
        let state = c.state.as_ref();
        let what = if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            format!("waiting {}", w.reason.as_deref().unwrap_or("?"))
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            format!(
                "terminated {} (exit {})",
                t.reason.as_deref().unwrap_or("?"),
                t.exit_code
            )
        } else {
            "running, not ready".into()
        };
        parts.push(format!(
            "container {} {what}{}",
            c.name,
            if c.restart_count > 0 {
                format!(", {} restart(s)", c.restart_count)
            } else {
                String::new()
            }
        ));
    }
    parts.join(", ")
}

fn pod_evidence(p: &Pod) -> Evidence {
    Evidence {
        kind: "PodStatus".into(),
        object: format!(
            "pod/{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        ),
        message: pod_state(p),
        ..Default::default()
    }
}

/// `kubectl diag run --service`: why a Service has no ready endpoint (its selector matches no
/// pod, or which pods are not ready and why), or None when it has ready endpoints.
pub fn service_without_endpoints(f: &ServiceFacts) -> Option<RootCause> {
    let Some(svc) = &f.service else {
        return Some(RootCause {
            reason: "ServiceNotFound".into(),
            summary: format!("Service {} does not exist", f.key),
            ..Default::default()
        });
    };
    let (why, evidence, _) = backing(f, svc);
    Some(RootCause {
        reason: "ServiceNoReadyEndpoints".into(),
        summary: format!("Service {} has no ready endpoint: {}", f.key, why?),
        suggestion: "make the Service's pods ready (kubectl diag run --pod NAME), or fix its selector to match their labels".into(),
        evidence,
        ..Default::default()
    })
}

/// `kubectl diag run --job`: a Job that gave up (condition Failed, such as
/// BackoffLimitExceeded or DeadlineExceeded), named with its pods' last failures; None while it
/// has not failed.
pub fn job_failed(
    key: &str,
    job: &k8s_openapi::api::batch::v1::Job,
    pods: &[Pod],
) -> Option<RootCause> {
    let status = job.status.as_ref()?;
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    let reason = failed.reason.clone().unwrap_or_else(|| "Failed".into());
    let limit = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(6);
    // The pods' own terminations say why each attempt failed; newest first.
    let mut attempts: Vec<(&Pod, String)> = pods
        .iter()
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            let t = st
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| {
                    let t = c.state.as_ref()?.terminated.as_ref()?;
                    (t.exit_code != 0).then(|| {
                        format!(
                            "container {} exited {} ({}){}",
                            c.name,
                            t.exit_code,
                            t.reason.as_deref().unwrap_or("Error"),
                            t.message
                                .as_deref()
                                .map(|m| format!(": {}", m.trim()))
                                .unwrap_or_default()
                        )
                    })
                })
                .or_else(|| {
                    (st.phase.as_deref() == Some("Failed"))
                        .then(|| st.reason.clone().unwrap_or_else(|| "Failed".into()))
                })?;
            Some((p, t))
        })
        .collect();
    // The attempt that ended last (else was created last) is the one to read first.
    let ended = |p: &Pod| {
        let finished = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
            .map(|t| t.0)
            .max();
        (finished, p.metadata.creation_timestamp.clone().map(|t| t.0))
    };
    attempts.sort_by_key(|(p, _)| std::cmp::Reverse(ended(p)));
    let last = attempts
        .first()
        .map(|(p, why)| {
            format!(
                "; the last attempt, pod {}, failed: {why}",
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "; no failed pod is left to say why".into());
    let mut evidence = vec![Evidence {
        kind: "JobStatus".into(),
        object: format!("job/{key}"),
        message: format!(
            "condition Failed {reason}: {}; {} failed, {} succeeded",
            failed.message.as_deref().unwrap_or(""),
            status.failed.unwrap_or(0),
            status.succeeded.unwrap_or(0)
        ),
        timestamp: failed.last_transition_time.clone(),
        ..Default::default()
    }];
    evidence.extend(attempts.iter().take(3).map(|(p, why)| Evidence {
        kind: "PodStatus".into(),
        object: format!(
            "pod/{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        ),
        message: why.clone(),
        ..Default::default()
    }));
    let summary = if reason == "BackoffLimitExceeded" {
        format!(
            "Job {key} gave up after {} failed attempt(s), past its backoffLimit {limit}{last}",
            status.failed.unwrap_or(0)
        )
    } else {
        format!(
            "Job {key} failed ({reason}: {}){last}",
            failed.message.as_deref().unwrap_or("")
        )
    };
    Some(RootCause {
        reason: if reason == "BackoffLimitExceeded" { "JobBackoffLimitExceeded".into() } else { format!("Job{reason}") },
        summary,
        suggestion: "fix what the last attempt's container says (kubectl logs of that pod), then delete and recreate the Job; raise spec.backoffLimit only for failures that retrying fixes".into(),
        evidence,
        since: failed.last_transition_time.clone(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
