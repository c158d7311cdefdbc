//! The container runtime down or hung, from a CRI call made with a short timeout: for the node,
//! and for every pod of the node waiting for a sandbox or a container, which all point at the
//! same cause (the runtime on the node, its socket and the error).

use kdiag_api::Evidence;
use kdiag_collectors::cri::probe::{RuntimeProbe, RuntimeState};
use kdiag_collectors::pod_detail::NodeDetail;

use super::facts::Facts;
use super::finding::{Finding, Rank};
use super::node::WEIGHT_RUNTIME;

/// (reason, what is wrong in words) of a broken runtime; None when it answers. A socket that
/// does not exist is a runtime down only when something else says so too (`corroborated`: the
/// kubelet reporting its node not Ready, the pod's sandbox failing): otherwise it is more likely
/// an agent pointed at the wrong path (`--cri-socket`) than a runtime that removed its socket.
fn fault(p: &RuntimeProbe, corroborated: bool) -> Option<(&'static str, String)> {
    let process = match &p.process {
        Some(d) => format!(" ({} pid {} is {})", d.name, d.pid, d.state_words()),
        None => String::new(),
    };
    match p.state {
        RuntimeState::Answering => None,
        RuntimeState::NoSocket if !corroborated => None,
        RuntimeState::NoSocket => Some((
            "ContainerRuntimeDown",
            format!("is down: its socket {} does not exist", p.socket),
        )),
        RuntimeState::Refused => Some((
            "ContainerRuntimeDown",
            format!(
                "is down: its socket {} refuses connections ({}); no runtime process listens on it",
                p.socket, p.error
            ),
        )),
        RuntimeState::TimedOut => Some((
            "ContainerRuntimeHung",
            format!(
                "is hung: its socket {} accepts connections but the CRI Version call got no answer within {} ms{process}",
                p.socket, p.timeout_millis
            ),
        )),
        RuntimeState::Failed => Some((
            "ContainerRuntimeFailing",
            format!(
                "fails CRI calls on its socket {}: {}{process}",
                p.socket, p.error
            ),
        )),
    }
}

fn suggestion(p: &RuntimeProbe) -> String {
    match p.state {
        RuntimeState::TimedOut => match &p.process {
            Some(d) if d.stopped() => format!(
                "The runtime's process {} is stopped: resume it (kill -CONT {}) or restart it (systemctl restart containerd); pods waiting for it start once it answers.",
                d.pid, d.pid
            ),
            _ => "The runtime accepts connections and does not answer: look for a deadlock or a stuck shim in its log (journalctl -u containerd, or crio), its load and its disk; restarting it (systemctl restart containerd) lets waiting pods start.".into(),
        },
        _ => "Start the runtime (systemctl status containerd, or crio; journalctl -u containerd for why it ended) and check the kubelet's --container-runtime-endpoint names its socket; until it answers, no pod sandbox or container can be created on the node.".into(),
    }
}

fn evidence(node: &NodeDetail, p: &RuntimeProbe, key: &str) -> Evidence {
    Evidence {
        kind: "ContainerRuntime".into(),
        message: format!(
            "CRI Version on {}: {:?} after {} ms (timeout {} ms){}{}",
            p.socket,
            p.state,
            p.took_millis,
            p.timeout_millis,
            if p.error.is_empty() {
                String::new()
            } else {
                format!(": {}", p.error)
            },
            match &p.process {
                Some(d) => format!("; {} pid {} state {}", d.name, d.pid, d.state),
                None => "; no runtime process listens on the socket".into(),
            }
        ),
        object: format!("node/{}", node.name),
        context_key: key.to_owned(),
        timestamp: p
            .at
            .parse()
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
    }
}

/// The node's runtime, when it does not answer.
pub fn node_finding(node: &NodeDetail, p: &RuntimeProbe, key: &str) -> Option<Finding> {
    let (reason, what) = fault(p, kubelet_reports_not_ready(node))?;
    Some(
        Finding::new(
            reason,
            Rank::Node,
            format!(
                "the container runtime on node {} {what}: no pod sandbox or container can be created or inspected there",
                node.name
            ),
            suggestion(p),
        )
        .weighted(WEIGHT_RUNTIME)
        .with(evidence(node, p, key)),
    )
}

/// Ready False: a kubelet is alive and says the node is not ready (a dead runtime is one of its
/// reasons). Unknown or no condition at all means no kubelet reports: that is the kubelet's
/// fault or a node that never ran one, and says nothing about the runtime.
fn kubelet_reports_not_ready(node: &NodeDetail) -> bool {
    node.conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False")
}

/// Whether the pod waits for the runtime: on a node, not deleted, and some container not yet
/// created (no status, or waiting ContainerCreating / PodInitializing).
pub fn waits_for_runtime(f: &Facts) -> bool {
    let on_node = f
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    if !on_node || f.pod().metadata.deletion_timestamp.is_some() || f.phase() != "Pending" {
        return false;
    }
    f.containers().iter().any(|c| match c.status {
        None => true,
        Some(s) => s
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .is_some_and(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some("ContainerCreating" | "PodInitializing") | None
                )
            }),
    })
}

/// A pod waiting for a runtime that does not answer: the runtime is the cause, the same one
/// for every pod of the node.
pub fn check(f: &Facts) -> Vec<Finding> {
    let (Some(p), Some(node)) = (f.runtime.as_ref(), f.detail.node.as_ref()) else {
        return Vec::new();
    };
    if !waits_for_runtime(f) {
        return Vec::new();
    }
    let sandbox_failing = f.events_with("FailedCreatePodSandBox").next().is_some();
    let Some((reason, what)) = fault(p, sandbox_failing || kubelet_reports_not_ready(node)) else {
        return Vec::new();
    };
    let object = f.object();
    let mut finding = Finding::new(
        reason,
        Rank::Definite,
        format!(
            "pod {} cannot start: the container runtime on node {} {what}; every pod waiting for a sandbox or container there waits for it",
            f.key(),
            node.name
        ),
        suggestion(p),
    )
    .with(evidence(
        node,
        p,
        kdiag_collectors::pod_detail::POD_DETAIL_INFORMATION,
    ));
    for e in f.events_with("FailedCreatePodSandBox") {
        finding = finding.with_event(e, &object);
    }
    vec![finding]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_collectors::listener::DaemonProcess;

    fn node() -> NodeDetail {
        NodeDetail {
            name: "n1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_refused_socket_is_a_runtime_down_and_a_silent_one_a_runtime_hung_with_its_stopped_process()
    {
        let down = RuntimeProbe {
            socket: "/run/containerd/containerd.sock".into(),
            state: RuntimeState::Refused,
            error: "connect: Connection refused (os error 111)".into(),
            timeout_millis: 2000,
            ..Default::default()
        };
        let f = node_finding(&node(), &down, "k").unwrap();
        assert_eq!(f.reason, "ContainerRuntimeDown");
        assert!(
            f.summary
                .contains("its socket /run/containerd/containerd.sock refuses connections"),
            "{}",
            f.summary
        );
        let hung = RuntimeProbe {
            state: RuntimeState::TimedOut,
            process: Some(DaemonProcess {
                pid: 42,
                name: "containerd".into(),
                state: "T".into(),
                command: vec!["containerd".into()],
            }),
            ..down
        };
        let f = node_finding(&node(), &hung, "k").unwrap();
        assert_eq!(f.reason, "ContainerRuntimeHung");
        assert!(
            f.summary.contains("containerd pid 42 is stopped"),
            "{}",
            f.summary
        );
        assert!(f.suggestion.contains("kill -CONT 42"), "{}", f.suggestion);
        assert!(
            node_finding(&node(), &RuntimeProbe::default(), "k").is_none(),
            "an answering runtime is no finding"
        );
        let missing = RuntimeProbe {
            state: RuntimeState::NoSocket,
            ..Default::default()
        };
        let mut ready = node();
        ready.conditions =
            serde_json::from_value(serde_json::json!([{"type": "Ready", "status": "True"}]))
                .unwrap();
        assert!(
            node_finding(&ready, &missing, "k").is_none(),
            "no socket on a Ready node is the agent's configuration, not the runtime"
        );
        assert!(
            node_finding(&node(), &missing, "k").is_none(),
            "no socket on a node no kubelet reports for (no Ready condition) blames nothing"
        );
        let mut not_ready = node();
        not_ready.conditions = serde_json::from_value(serde_json::json!([
            {"type": "Ready", "status": "False", "message": "container runtime is down"}
        ]))
        .unwrap();
        assert_eq!(
            node_finding(&not_ready, &missing, "k").map(|f| f.reason),
            Some("ContainerRuntimeDown")
        );
    }
}
