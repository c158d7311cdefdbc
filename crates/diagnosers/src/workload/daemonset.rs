//! A DaemonSet that is not where it should be: nodes it skips because of taints it does not
//! tolerate (the DaemonSet controller leaves such nodes out of `desiredNumberScheduled`, so its
//! status looks healthy), pods it cannot create, or pods that do not become ready.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ResourceQuota, Taint, Toleration};
use kdiag_api::{Evidence, RootCause};

use super::create::{AdmissionWebhook, Refused};
use super::rollout::{not_found, not_ready};
use super::{oldest_unready, ready, taint_text};
use crate::triage::schedule::tolerates;

/// A DaemonSet with the cluster's nodes and its pods, as read from the apiserver.
#[derive(Debug, Clone, Default)]
pub struct DaemonSetFacts {
    pub key: String,
    pub daemon_set: Option<DaemonSet>,
    pub nodes: Vec<Node>,
    /// The pods its selector matches.
    pub pods: Vec<Pod>,
    /// The DaemonSet's own Events.
    pub events: Vec<Event>,
    pub quotas: Vec<ResourceQuota>,
    /// The cluster's admission webhooks (empty when they cannot be read).
    pub webhooks: Vec<AdmissionWebhook>,
}

/// The tolerations the DaemonSet controller adds to every pod it creates (Kubernetes 1.20's
/// `daemon/util`): its pods stay on nodes that are not ready, unreachable, under pressure or
/// cordoned. The network one only for host-network pods.
fn implicit_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut all = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        all.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    all
}

/// The node a DaemonSet pod is for: its nodeName once bound, else the node its affinity pins
/// it to (the controller sets `matchFields metadata.name`).
fn pod_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// Why a DaemonSet is missing from nodes or its pods fail, or None when it runs ready on every
/// node it may.
pub fn daemonset_broken(f: &DaemonSetFacts) -> Option<RootCause> {
    let ns = f.key.split('/').next().unwrap_or_default();
    let Some(ds) = &f.daemon_set else {
        return Some(not_found("DaemonSet", &f.key));
    };
    let what = format!("DaemonSet {}", f.key);
    let object = format!("daemonset/{}", f.key);
    let st = ds.status.clone().unwrap_or_default();
    let pod_spec = ds.spec.as_ref().and_then(|s| s.template.spec.clone());
    let host_network = pod_spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let mut tolerations = pod_spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    tolerations.extend(implicit_tolerations(host_network));
    let selector = pod_spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let status_evidence = Evidence {
        kind: "DaemonSetStatus".into(),
        object: object.clone(),
        message: format!(
            "{} desired, {} scheduled, {} ready, {} misscheduled; {} node(s) in the cluster",
            st.desired_number_scheduled,
            st.current_number_scheduled,
            st.number_ready,
            st.number_misscheduled,
            f.nodes.len()
        ),
        ..Default::default()
    };

    if st.current_number_scheduled < st.desired_number_scheduled
        && let Some(e) = f
            .events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))
    {
        let message = e.message.clone().unwrap_or_default();
        let mut cause = Refused {
            what: &what,
            creator: "it",
            have: st.current_number_scheduled,
            want: st.desired_number_scheduled,
            message: &message,
            seen: Evidence {
                kind: "Event".into(),
                object: object.clone(),
                message: format!("FailedCreate ({} time(s)): {message}", e.count.unwrap_or(1)),
                timestamp: e.last_timestamp.clone(),
                ..Default::default()
            },
            quotas: &f.quotas,
            namespace: ns,
            webhooks: &f.webhooks,
            template: ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        }
        .cause();
        cause.evidence.push(status_evidence);
        return Some(cause);
    }

    // Nodes without a pod of it, and the taints that keep it off each. Nodes its nodeSelector
    // does not select are left out on purpose: that is not a fault.
    let with_pod: Vec<String> = f.pods.iter().filter_map(pod_node).collect();
    let mut tainted: Vec<(&str, Vec<&Taint>)> = Vec::new();
    for n in &f.nodes {
        let name = n.metadata.name.as_deref().unwrap_or_default();
        if with_pod.iter().any(|p| p == name) {
            continue;
        }
        let labels = n.metadata.labels.clone().unwrap_or_default();
        if !selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        {
            continue;
        }
        let blocking: Vec<&Taint> = n
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .filter(|t| !tolerates(&tolerations, t))
            .collect();
        if !blocking.is_empty() {
            tainted.push((name, blocking));
        }
    }
    if !tainted.is_empty() {
        let listed = |ts: &[&Taint]| {
            ts.iter()
                .map(|t| taint_text(t))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let nodes = tainted
            .iter()
            .map(|(n, ts)| format!("node {n} ({})", listed(ts)))
            .collect::<Vec<_>>()
            .join(", ");
        let first = &tainted[0];
        let t = first.1[0];
        let mut evidence: Vec<Evidence> = tainted
            .iter()
            .map(|(n, ts)| Evidence {
                kind: "NodeTaints".into(),
                object: format!("node/{n}"),
                message: format!("taints the DaemonSet does not tolerate: {}", listed(ts)),
                ..Default::default()
            })
            .collect();
        evidence.push(Evidence {
            kind: "DaemonSetSpec".into(),
            object: object.clone(),
            message: format!(
                "tolerations in its pod template: {}",
                pod_spec
                    .as_ref()
                    .and_then(|s| s.tolerations.as_ref())
                    .filter(|t| !t.is_empty())
                    .map(|ts| ts
                        .iter()
                        .map(|t| format!(
                            "{}{}{}",
                            t.key.as_deref().unwrap_or("*"),
                            t.value
                                .as_deref()
                                .map(|v| format!("={v}"))
                                .unwrap_or_default(),
                            t.effect
                                .as_deref()
                                .map(|e| format!(":{e}"))
                                .unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_else(|| "none".into())
            ),
            ..Default::default()
        });
        evidence.push(status_evidence);
        return Some(RootCause {
            reason: "DaemonSetTaintNotTolerated".into(),
            summary: format!(
                "{what} runs on {} of {} node(s): it does not tolerate the taints of {nodes}, so the DaemonSet controller leaves {} out",
                with_pod.len(),
                f.nodes.len(),
                if tainted.len() == 1 {
                    "that node"
                } else {
                    "those nodes"
                }
            ),
            suggestion: format!(
                "If it must run there, add a toleration to its pod template (spec.template.spec.tolerations: key {}, operator Exists, effect {}); else remove the taint (kubectl taint node {} {}-).",
                t.key, t.effect, first.0, t.key
            ),
            evidence,
            ..Default::default()
        });
    }

    let unready: Vec<&Pod> = f.pods.iter().filter(|p| !ready(p)).collect();
    let first = oldest_unready(&f.pods)?;
    let mut cause = not_ready(
        &what,
        st.number_ready,
        st.desired_number_scheduled,
        first,
        unready.len(),
        "DaemonSetPodsNotReady",
    );
    if let Some(node) = pod_node(first) {
        cause.summary = cause.summary.replacen(
            " is not ready:",
            &format!(" on node {node} is not ready:"),
            1,
        );
    }
    cause.evidence.push(status_evidence);
    Some(cause)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn facts(tolerations: Value, taints: Value, pods: Value) -> DaemonSetFacts {
        DaemonSetFacts {
            key: "infra/agent".into(),
            daemon_set: Some(from(
                json!({"metadata": {"name": "agent", "namespace": "infra"},
                "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "agent"}],
                    "tolerations": tolerations}}},
                "status": {"desiredNumberScheduled": 1, "currentNumberScheduled": 1, "numberReady": 1,
                    "numberMisscheduled": 0}}),
            )),
            nodes: from(json!([
                {"metadata": {"name": "n1"}, "spec": {}},
                {"metadata": {"name": "n2"}, "spec": {"taints": taints}}
            ])),
            pods: from(pods),
            events: Vec::new(),
            quotas: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    fn pod_on(name: &str, node: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "infra"}, "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "agent", "ready": ready, "restartCount": 4, "image": "x", "imageID": "",
                    "state": if ready { json!({"running": {}}) } else { json!({"waiting": {"reason": "CrashLoopBackOff"}}) }}]}})
    }

    #[test]
    fn a_node_tainted_against_it_is_named_with_the_taint() {
        let f = facts(
            json!([]),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                   {"key": "soft", "effect": "PreferNoSchedule"},
                   {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]),
            json!([pod_on("agent-a", "n1", true)]),
        );
        let c = daemonset_broken(&f).unwrap();
        assert_eq!(c.reason, "DaemonSetTaintNotTolerated");
        assert_eq!(
            c.summary,
            "DaemonSet infra/agent runs on 1 of 2 node(s): it does not tolerate the taints of node n2 (dedicated=gpu:NoSchedule), so the DaemonSet controller leaves that node out"
        );
        assert_eq!(c.evidence[0].object, "node/n2");
        assert!(
            c.suggestion.contains("kubectl taint node n2 dedicated-"),
            "{}",
            c.suggestion
        );
    }

    #[test]
    fn a_toleration_for_the_taint_keeps_it_quiet() {
        let f = facts(
            json!([{"key": "dedicated", "operator": "Exists"}]),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            json!([pod_on("agent-a", "n1", true), pod_on("agent-b", "n2", true)]),
        );
        assert_eq!(daemonset_broken(&f), None);
    }

    #[test]
    fn a_failing_pod_is_named_with_its_node_and_its_own_cause() {
        let f = facts(
            json!([]),
            json!([]),
            json!([
                pod_on("agent-a", "n1", true),
                pod_on("agent-b", "n2", false)
            ]),
        );
        let c = daemonset_broken(&f).unwrap();
        assert_eq!(c.reason, "DaemonSetPodsNotReady");
        assert!(
            c.summary.contains("pod infra/agent-b on node n2 is not ready: container agent is waiting with CrashLoopBackOff (4 restart(s))"),
            "{}",
            c.summary
        );
    }
}
