//! Pods no node takes: the scheduler's FailedScheduling message turned into plain words, with
//! the numbers behind it (what the pod requests against the most any node has free, the
//! taints it does not tolerate, the labels its selector wants, its unbound claims).

use k8s_openapi::api::core::v1::{Taint, Toleration};
use kdiag_api::Evidence;
use kdiag_collectors::pod_detail::resources::{human_bytes, human_cpu};
use kdiag_collectors::pod_detail::{NodeFit, POD_DETAIL_INFORMATION, Resources, Scheduling};

use super::facts::Facts;
use super::finding::{self, Finding, Rank, quote};

/// A pod waiting this long with no word from any scheduler is worth a finding.
const NO_SCHEDULER_AFTER_SECONDS: i64 = 10;

/// One reason of a FailedScheduling message: how many nodes it applies to and the text.
#[derive(Debug, PartialEq)]
pub struct SchedulerReason {
    pub nodes: i64,
    pub text: String,
}

/// `0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had taint {a: b}, that the pod
/// didn't tolerate.` → [(1, "Insufficient cpu"), (2, "node(s) had taint {a: b}, that the pod
/// didn't tolerate")]. A message without counts (a claim that does not exist) is one reason.
pub fn parse(message: &str) -> Vec<SchedulerReason> {
    let body = message
        .split(" preemption:")
        .next()
        .unwrap_or(message)
        .trim();
    let Some((_, list)) = body.split_once(" nodes are available: ") else {
        return vec![SchedulerReason {
            nodes: 0,
            text: body.trim_end_matches('.').to_owned(),
        }];
    };
    let list = list.trim().trim_end_matches('.');
    let mut pieces: Vec<String> = Vec::new();
    for p in list.split(", ") {
        // ", that the pod didn't tolerate" continues a taint reason.
        match pieces.last_mut() {
            Some(last) if !p.starts_with(|c: char| c.is_ascii_digit()) => {
                last.push_str(", ");
                last.push_str(p);
            }
            _ => pieces.push(p.to_owned()),
        }
    }
    pieces
        .into_iter()
        .map(|p| match p.split_once(' ') {
            Some((n, rest)) if n.parse::<i64>().is_ok() => SchedulerReason {
                nodes: n.parse().unwrap_or(0),
                text: rest.to_owned(),
            },
            _ => SchedulerReason { nodes: 0, text: p },
        })
        .collect()
}

/// Whether `tolerations` let a pod onto a node with `taint`.
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = (key.is_empty() && exists) || key == taint.key;
        let value_ok =
            exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        effect_ok && key_ok && value_ok
    })
}

fn taint_text(t: &Taint) -> String {
    match t.value.as_deref() {
        Some(v) if !v.is_empty() => format!("{}={v}:{}", t.key, t.effect),
        _ => format!("{}:{}", t.key, t.effect),
    }
}

pub fn check(f: &Facts) -> Vec<Finding> {
    let spec = f.pod().spec.as_ref();
    if spec.is_some_and(|s| s.node_name.as_deref().is_some_and(|n| !n.is_empty()))
        || f.pod().metadata.deletion_timestamp.is_some()
        || f.phase() != "Pending"
    {
        return Vec::new();
    }
    let object = f.object();
    let events: Vec<_> = f.events_with("FailedScheduling").collect();
    let condition = f
        .pod()
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        });
    let message = events
        .last()
        .and_then(|e| e.message.clone())
        .or_else(|| condition.and_then(|c| c.message.clone()));
    let Some(message) = message else {
        return no_scheduler(f);
    };
    let scheduling = f.detail.scheduling.clone().unwrap_or_default();
    let total_nodes = message
        .split_once('/')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(scheduling.nodes.len() as i64);
    // "1 Insufficient cpu, 1 Insufficient memory" is one cause: the pod does not fit.
    let (short, mut reasons): (Vec<_>, Vec<_>) = parse(&message)
        .into_iter()
        .partition(|r| r.text.starts_with("Insufficient "));
    if !short.is_empty() {
        reasons.insert(
            0,
            SchedulerReason {
                nodes: short.iter().map(|r| r.nodes).max().unwrap_or(0),
                text: format!(
                    "Insufficient {}",
                    short
                        .iter()
                        .map(|r| r.text.trim_start_matches("Insufficient "))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        );
    }
    let mut out = Vec::new();
    for r in reasons {
        let (reason, plain, suggestion) = explain(f, &r, &scheduling);
        let mut finding = Finding::new(
            reason,
            Rank::Definite,
            format!(
                "pod {} cannot be scheduled{}: {plain}",
                f.key(),
                if r.nodes > 0 {
                    format!(" ({} of {total_nodes} node(s))", r.nodes)
                } else {
                    String::new()
                }
            ),
            suggestion,
        )
        .weighted(r.nodes);
        finding = finding.with(finding::status(
            &object,
            format!("scheduler: {}", message.trim()),
            condition
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
        ));
        for e in events.iter().rev().take(2).rev() {
            finding = finding.with_event(e, &object);
        }
        if reason == "UnboundPersistentVolumeClaim" {
            for c in scheduling.claims.iter().filter(|c| c.phase != "Bound") {
                let why = c
                    .events
                    .last()
                    .and_then(|e| e.message.clone())
                    .unwrap_or_default();
                finding = finding.with(Evidence {
                    kind: "PersistentVolumeClaim".into(),
                    message: format!(
                        "claim {} is {}{}{}",
                        c.name,
                        c.phase,
                        if c.storage_class_name.is_empty() {
                            String::new()
                        } else {
                            format!(" (storageClassName {})", c.storage_class_name)
                        },
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    ),
                    object: format!("persistentvolumeclaim/{}/{}", f.namespace(), c.name),
                    context_key: POD_DETAIL_INFORMATION.into(),
                    timestamp: finding::time(
                        c.events
                            .last()
                            .and_then(kdiag_collectors::pod_detail::event_time),
                    ),
                });
            }
        }
        out.push(finding);
    }
    out
}

/// The plain words, reason code and suggestion for one scheduler reason.
/// "the hostPort it asks for is taken", naming per node the port and the pod that holds it.
fn host_port_conflict(s: &Scheduling) -> String {
    let held: Vec<String> = s
        .nodes
        .iter()
        .flat_map(|n| n.host_port_holders.iter().map(move |h| (n, h)))
        .map(|(n, h)| {
            let on = if h.host_ip.is_empty() {
                String::new()
            } else {
                format!(" on {}", h.host_ip)
            };
            format!(
                "{}/{}{on} is held by pod {} on node {}",
                h.port, h.protocol, h.pod, n.name
            )
        })
        .collect();
    if held.is_empty() {
        "the hostPort it asks for is taken on every node".into()
    } else {
        format!("the hostPort it asks for is taken: {}", held.join("; "))
    }
}

fn explain(f: &Facts, r: &SchedulerReason, s: &Scheduling) -> (&'static str, String, String) {
    let text = r.text.as_str();
    let spec = f.pod().spec.clone().unwrap_or_default();
    if let Some(resources) = text.strip_prefix("Insufficient ") {
        let list: Vec<&str> = resources.split(", ").collect();
        return (
            "InsufficientResources",
            format!(
                "no node has enough free {resources}: {}",
                list.iter()
                    .map(|r| insufficient(r, s))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            format!(
                "Lower the pod's requests (resources.requests.{}) to what it really needs, free room on a node (scale down other workloads), or add a node with more; kubectl describe nodes shows each node's 'Allocated resources'.",
                list.join(", requests.")
            ),
        );
    }
    if text.starts_with("Too many pods") {
        return (
            "InsufficientResources",
            "every node holds its maximum number of pods (allocatable pods)".into(),
            "Add nodes, or raise the kubelet's maxPods where the node can take more.".into(),
        );
    }
    if text.contains("had taint") || text.contains("untolerated taint") {
        let tolerations = spec.tolerations.clone().unwrap_or_default();
        let taints: Vec<String> = s
            .nodes
            .iter()
            .flat_map(|n| n.taints.iter().map(move |t| (n, t)))
            .filter(|(_, t)| t.effect != "PreferNoSchedule" && !tolerates(&tolerations, t))
            .map(|(n, t)| format!("{} on node {}", taint_text(t), n.name))
            .collect();
        return (
            "TaintNotTolerated",
            format!(
                "node(s) carry a taint the pod does not tolerate{}",
                if taints.is_empty() {
                    format!(" ({})", quote(text, 120))
                } else {
                    format!(": {}", taints.join(", "))
                }
            ),
            "Add a matching toleration to the pod if it belongs on those nodes, or remove the taint once what it marks is fixed (a node.kubernetes.io/* taint means the node is not ready, under pressure or cordoned).".into(),
        );
    }
    if text.contains("node affinity") || text.contains("node selector") {
        let selector = spec.node_selector.clone().unwrap_or_default();
        let unmatched: Vec<String> = selector
            .iter()
            .filter(|(k, v)| !s.nodes.iter().any(|n| n.labels.get(*k) == Some(*v)))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let affinity = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some();
        let what = match (unmatched.is_empty(), affinity) {
            (false, _) => format!(
                "no node has the label(s) its nodeSelector requires: {}",
                unmatched.join(", ")
            ),
            (true, true) => "no node matches its required node affinity".into(),
            (true, false) if !selector.is_empty() => "no node matches its nodeSelector".into(),
            _ => "no node matches its node selector or affinity".into(),
        };
        return (
            "NodeSelectorMismatch",
            what,
            "Label a node as the pod asks (kubectl label node NODE key=value), or fix the pod's nodeSelector / nodeAffinity.".into(),
        );
    }
    if text.contains("unbound immediate PersistentVolumeClaims")
        || text.contains("persistentvolumeclaim")
        || text.contains("didn't find available persistent volumes")
    {
        let unbound: Vec<String> = s
            .claims
            .iter()
            .filter(|c| c.phase != "Bound")
            .map(|c| {
                let why = c
                    .events
                    .last()
                    .and_then(|e| e.message.clone())
                    .map(|m| format!(": {}", quote(&m, 120)))
                    .unwrap_or_default();
                format!("{} is {}{why}", c.name, c.phase)
            })
            .collect();
        return (
            "UnboundPersistentVolumeClaim",
            if unbound.is_empty() {
                format!("its PersistentVolumeClaims are not bound ({})", quote(text, 120))
            } else {
                format!("its PersistentVolumeClaim(s) are not bound: {}", unbound.join("; "))
            },
            "Make the claim bindable: a StorageClass that exists and has a working provisioner (kubectl get storageclass), or a PersistentVolume matching its size, access mode and class; the claim's events say what the provisioner tried.".into(),
        );
    }
    if text.contains("were unschedulable") || text.contains("unschedulable") {
        let cordoned: Vec<&str> = s
            .nodes
            .iter()
            .filter(|n| n.unschedulable)
            .map(|n| n.name.as_str())
            .collect();
        return (
            "NodeUnschedulable",
            format!(
                "node(s) are cordoned (spec.unschedulable){}",
                if cordoned.is_empty() {
                    String::new()
                } else {
                    format!(": {}", cordoned.join(", "))
                }
            ),
            "Uncordon the node once its maintenance is over (kubectl uncordon NODE), or add nodes."
                .into(),
        );
    }
    if text.contains("free ports") {
        return (
            "HostPortConflict",
            host_port_conflict(s),
            "Drop hostPort from the pod (use a Service), or free the port on a node: delete or move the pod holding it, or give one of them another hostPort.".into(),
        );
    }
    if text.contains("pod affinity") || text.contains("anti-affinity") {
        return (
            "PodAffinityMismatch",
            format!("its pod (anti-)affinity rules exclude every node ({})", quote(text, 120)),
            "Relax the pod's podAffinity/podAntiAffinity (preferred instead of required), or add nodes in the topology it needs.".into(),
        );
    }
    if text.contains("volume node affinity") {
        return (
            "VolumeNodeAffinityConflict",
            "its volumes are bound to a zone or node it cannot run on".into(),
            "The pod's PersistentVolumes live where no node fits the pod: schedule it in the volume's zone, or recreate the volume where the pod can run.".into(),
        );
    }
    (
        "Unschedulable",
        quote(text, 200),
        "Read the scheduler's message (kubectl describe pod) and change the pod's requests, selectors, tolerations or volumes, or the nodes, accordingly.".into(),
    )
}

/// `cpu: it requests 64 CPU, the most free on any node is 1.9 CPU (node a: …)`.
fn insufficient(resource: &str, s: &Scheduling) -> String {
    let pick: fn(&Resources) -> i64 = match resource {
        "cpu" => |r| r.cpu_millis,
        "memory" => |r| r.memory_bytes,
        "ephemeral-storage" => |r| r.ephemeral_storage_bytes,
        _ => {
            return format!("{resource}: no node has enough free for its request");
        }
    };
    let show = |v: i64| match resource {
        "cpu" => format!("{} CPU", human_cpu(v)),
        _ => human_bytes(v),
    };
    let want = pick(&s.requested);
    let best: Option<&NodeFit> = s.nodes.iter().max_by_key(|n| pick(&n.free));
    match best {
        Some(n) => format!(
            "{resource}: it requests {}, the most free on any node is {} (node {}: {} allocatable, {} requested by its pods)",
            show(want),
            show(pick(&n.free).max(0)),
            n.name,
            show(pick(&n.allocatable)),
            show(pick(&n.requested))
        ),
        None => format!(
            "{resource}: it requests {}, more than any node has free",
            show(want)
        ),
    }
}

/// A pending pod no scheduler has said anything about.
fn no_scheduler(f: &Facts) -> Vec<Finding> {
    let created = f.pod().metadata.creation_timestamp.as_ref().map(|t| t.0);
    let waited = created
        .map(|c| f.now.duration_since(c).as_secs())
        .unwrap_or(0);
    if waited < NO_SCHEDULER_AFTER_SECONDS {
        return Vec::new();
    }
    let scheduler = f
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.clone())
        .unwrap_or_else(|| "default-scheduler".into());
    let mut finding = Finding::new(
        "NotScheduled",
        Rank::Definite,
        format!(
            "pod {} has waited {waited} s for a node and no scheduler has said why: is the scheduler {scheduler} running?",
            f.key()
        ),
        format!(
            "Check that {scheduler} runs (kube-scheduler's pods or service, its log, its leader election); a custom spec.schedulerName must name a scheduler that exists."
        ),
    )
    .with(finding::status(
        &f.object(),
        format!("no spec.nodeName and no FailedScheduling event after {waited} s; schedulerName {scheduler}"),
        created,
    ));
    finding.seen(created, Some(f.now));
    vec![finding]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduler_message_splits_into_its_reasons() {
        let r = parse(
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had taint {node-role.kubernetes.io/master: }, that the pod didn't tolerate.",
        );
        assert_eq!(
            r,
            vec![
                SchedulerReason {
                    nodes: 1,
                    text: "Insufficient cpu".into()
                },
                SchedulerReason {
                    nodes: 2,
                    text: "node(s) had taint {node-role.kubernetes.io/master: }, that the pod didn't tolerate".into()
                }
            ]
        );
        let r =
            parse("0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims.");
        assert_eq!(
            r[0].text,
            "pod has unbound immediate PersistentVolumeClaims"
        );
        let r = parse("persistentvolumeclaim \"data\" not found");
        assert_eq!(r[0].nodes, 0);
        assert_eq!(r[0].text, "persistentvolumeclaim \"data\" not found");
    }

    #[test]
    fn tolerations_match_taints_by_key_value_and_effect() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let t = |key: &str, op: &str, value: &str, effect: &str| Toleration {
            key: Some(key.into()),
            operator: Some(op.into()),
            value: Some(value.into()),
            effect: Some(effect.into()),
            ..Default::default()
        };
        assert!(tolerates(
            &[t("dedicated", "Equal", "gpu", "NoSchedule")],
            &taint
        ));
        assert!(tolerates(&[t("dedicated", "Exists", "", "")], &taint));
        assert!(tolerates(&[t("", "Exists", "", "")], &taint));
        assert!(!tolerates(
            &[t("dedicated", "Equal", "cpu", "NoSchedule")],
            &taint
        ));
        assert!(!tolerates(
            &[t("dedicated", "Equal", "gpu", "NoExecute")],
            &taint
        ));
        assert!(!tolerates(&[], &taint));
    }

    #[test]
    fn a_host_port_conflict_names_the_port_and_the_pod_holding_it_on_each_node() {
        let s = Scheduling {
            nodes: vec![NodeFit {
                name: "n1".into(),
                host_port_holders: vec![kdiag_collectors::pod_detail::types::HostPortHolder {
                    port: 8080,
                    protocol: "TCP".into(),
                    host_ip: String::new(),
                    pod: "web/holder".into(),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            host_port_conflict(&s),
            "the hostPort it asks for is taken: 8080/TCP is held by pod web/holder on node n1"
        );
        assert_eq!(
            host_port_conflict(&Scheduling::default()),
            "the hostPort it asks for is taken on every node",
            "without the holders (the pods could not be listed) it says no more than it knows"
        );
    }
}
