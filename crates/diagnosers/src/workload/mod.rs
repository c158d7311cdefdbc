//! Workload-level causes, judged from the objects `kubectl diag run --deployment`,
//! `--statefulset`, `--daemonset` and `--pdb` read: a rollout whose pods cannot be created or
//! do not become ready ([`rollout`]), a DaemonSet that skips nodes or whose pods fail
//! ([`daemonset`]), a PodDisruptionBudget that allows no eviction ([`pdb`]). Pure: the CLI does
//! the reading (`kdiag_cli::workload`).
//!
//! What the modules share lives here: why a pod is not ready in a few words, which pod to point
//! at first, and what a controller's `FailedCreate` says ([`create`]).

pub mod create;
pub mod daemonset;
pub mod pdb;
pub mod rollout;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kdiag_api::Evidence;

pub use daemonset::{DaemonSetFacts, daemonset_broken};
pub use pdb::{PdbFacts, pdb_blocking};
pub use rollout::{DeploymentFacts, StatefulSetFacts, deployment_stuck, statefulset_stuck};

/// Whether the pod counts as ready (its Ready condition), as the workload controllers count it.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Why a pod is not ready, from its own status: not scheduled (the scheduler's message), an
/// init container or container waiting (reason and message), terminated (exit code), or
/// running but failing its readiness probe. The pod triage (`kubectl diag run --pod`) goes
/// further; this is what the workload's answer quotes.
pub fn pod_cause(p: &Pod) -> String {
    let Some(st) = &p.status else {
        return "it has no status yet".into();
    };
    if let Some(c) = st
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return format!(
            "it is not scheduled ({}: {})",
            c.reason.as_deref().unwrap_or("Unschedulable"),
            c.message.as_deref().unwrap_or("no message").trim()
        );
    }
    if p.metadata.deletion_timestamp.is_some() {
        return "it is terminating".into();
    }
    // An init container that has not finished holds every container back.
    for c in st.init_container_statuses.iter().flatten() {
        let finished = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        if !finished && let Some(why) = container_state(c, true) {
            return format!("init container {why}");
        }
    }
    let readiness: Vec<&str> = p
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.readiness_probe.is_some())
        .map(|c| c.name.as_str())
        .collect();
    let why: Vec<String> = st
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| !c.ready)
        .filter_map(|c| {
            container_state(c, false).or_else(|| {
                Some(if readiness.contains(&c.name.as_str()) {
                    format!("container {} runs but fails its readiness probe", c.name)
                } else {
                    format!("container {} runs but is not ready", c.name)
                })
            })
        })
        .collect();
    if why.is_empty() {
        format!(
            "it is {} and not ready",
            st.phase.as_deref().unwrap_or("Pending")
        )
    } else {
        why.join("; ")
    }
}

/// A waiting or terminated container in words; None while it runs.
fn container_state(c: &ContainerStatus, init: bool) -> Option<String> {
    let state = c.state.as_ref()?;
    let restarts = if c.restart_count > 0 {
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| format!(", last exit code {}", t.exit_code))
            .unwrap_or_default();
        format!(" ({} restart(s){last})", c.restart_count)
    } else {
        String::new()
    };
    if let Some(w) = &state.waiting {
        let message = w
            .message
            .as_deref()
            .map(|m| format!(": {}", m.trim()))
            .unwrap_or_default();
        return Some(format!(
            "{}{} is waiting with {}{message}{restarts}",
            if init { "" } else { "container " },
            c.name,
            w.reason.as_deref().unwrap_or("no reason"),
        ));
    }
    if let Some(t) = &state.terminated {
        return Some(format!(
            "{}{} exited with code {} ({}){restarts}",
            if init { "" } else { "container " },
            c.name,
            t.exit_code,
            t.reason.as_deref().unwrap_or("Error"),
        ));
    }
    None
}

/// The unready pod to look at first: the oldest (it has had the most time to get ready), ties
/// by name. StatefulSets pass their pods in ordinal order and take the first.
pub fn oldest_unready(pods: &[Pod]) -> Option<&Pod> {
    pods.iter().filter(|p| !ready(p)).min_by_key(|p| {
        (
            p.metadata.creation_timestamp.clone().map(|t| t.0),
            p.metadata.name.clone(),
        )
    })
}

/// `PodStatus` evidence: the pod and why it is not ready.
pub fn pod_evidence(p: &Pod) -> Evidence {
    Evidence {
        kind: "PodStatus".into(),
        object: crate::pods::object(p),
        message: if ready(p) {
            "ready".into()
        } else {
            format!("not ready: {}", pod_cause(p))
        },
        ..Default::default()
    }
}

/// A taint as `kubectl taint` writes it: `key=value:Effect`.
pub fn taint_text(t: &k8s_openapi::api::core::v1::Taint) -> String {
    match t.value.as_deref() {
        Some(v) if !v.is_empty() => format!("{}={v}:{}", t.key, t.effect),
        _ => format!("{}:{}", t.key, t.effect),
    }
}

/// The names of pods, at most `max`, then how many more.
pub fn names(pods: &[&Pod], max: usize) -> String {
    let mut out: Vec<String> = pods
        .iter()
        .take(max)
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    if pods.len() > max {
        out.push(format!("{} more", pods.len() - max));
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_pod_the_scheduler_refused_quotes_the_schedulers_message() {
        let p = pod(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient cpu."}]}}),
        );
        assert_eq!(
            pod_cause(&p),
            "it is not scheduled (Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.)"
        );
    }

    #[test]
    fn a_waiting_container_is_named_with_its_reason_message_and_restarts() {
        let p = pod(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Pending",
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 2, "image": "x", "imageID": "",
                "lastState": {"terminated": {"exitCode": 3}},
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}}]}}),
        );
        assert_eq!(
            pod_cause(&p),
            "container app is waiting with CrashLoopBackOff: back-off 20s (2 restart(s), last exit code 3)"
        );
    }

    #[test]
    fn a_running_container_with_a_readiness_probe_fails_that_probe() {
        let p = pod(json!({"metadata": {"name": "a"},
            "spec": {"containers": [{"name": "app", "readinessProbe": {"exec": {"command": ["false"]}}}]},
            "status": {"phase": "Running",
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"running": {}}}]}}));
        assert_eq!(
            pod_cause(&p),
            "container app runs but fails its readiness probe"
        );
    }

    #[test]
    fn an_unfinished_init_container_comes_before_the_containers() {
        let p = pod(
            json!({"metadata": {"name": "a"}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
            "containerStatuses": [{"name": "app", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"waiting": {"reason": "PodInitializing"}}}]}}),
        );
        assert_eq!(
            pod_cause(&p),
            "init container migrate exited with code 1 (Error)"
        );
    }

    #[test]
    fn the_oldest_unready_pod_comes_first() {
        let pods: Vec<Pod> = serde_json::from_value(json!([
            {"metadata": {"name": "b", "creationTimestamp": "2026-12-01T10:00:02Z"}},
            {"metadata": {"name": "a", "creationTimestamp": "2026-12-01T10:00:01Z"},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "c", "creationTimestamp": "2026-12-01T10:00:03Z"}}
        ]))
        .unwrap();
        assert_eq!(
            oldest_unready(&pods).and_then(|p| p.metadata.name.as_deref()),
            Some("b")
        );
    }
}
