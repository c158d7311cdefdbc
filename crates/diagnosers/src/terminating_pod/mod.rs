//! `terminating-pod-diagnoser`: why pods that were deleted are still there.
//!
//! For each terminating pod of the node (or the one the Abnormal's podReference names) it
//! gathers: the finalizers, the processes that still belong to the pod (found through their
//! cgroups, which name the pod's UID, and through the runtime shims serving the pod's
//! sandboxes, containerd-shim-runc-v2 `-id` or CRI-O's conmon), whether each ignores SIGTERM,
//! and the volumes still mounted under the pod's directory. The rules in [`rules`] turn that
//! into causes; a SIGKILL is proposed in `signalRecovery` only where ending a process is the
//! fix (live processes past the deadline, or processes that ignore SIGTERM).

pub mod rules;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::context_keys::{
    SIGNAL_RECOVERY, TERMINATING_POD_DIAGNOSIS, TERMINATING_POD_FINDINGS,
};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use kdiag_api::{Abnormal, RootCause};
use kdiag_collectors::budget::{Deadline, blocking, cap_list, output_budget, truncated_key};
use kdiag_collectors::cri::CriClient;
use kdiag_collectors::mounts;
use kdiag_collectors::process::scan::{self, Snapshot};
use kube::Api;
use serde_json::{Value, json};

use crate::pods;
pub use rules::{Cause, PodFacts, ProcessFact, Role, Signal, Verdict};

/// Used when a pod has neither deletionGracePeriodSeconds nor terminationGracePeriodSeconds.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// The runtime is asked for sandbox IDs only as a second source: never wait long for it.
const CRI_TIMEOUT: Duration = Duration::from_secs(5);

pub struct TerminatingPodDiagnoser;

impl Processor for TerminatingPodDiagnoser {
    fn name(&self) -> &'static str {
        "terminating-pod-diagnoser"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let deadline = Deadline::within(ctx.timeout);
            let (terminating, checked) = terminating_pods(ctx, abnormal).await?;
            let node = observe(ctx, deadline).await?;
            let pods_dir = ctx.node.kubelet_root.join("pods");
            let facts: Vec<(Pod, PodFacts)> = terminating
                .into_iter()
                .map(|pod| {
                    let f = facts(
                        ctx,
                        &pod,
                        &node.snapshot,
                        &node.sandboxes,
                        &node.mounts,
                        &pods_dir,
                    );
                    (pod, f)
                })
                .collect();
            conclude(
                &facts,
                checked,
                &node.notes,
                &node.snapshot,
                ctx.max_output_bytes,
            )
        }
        .boxed()
    }
}

/// What the node shows about its pods: processes, sandboxes and mounts, with notes on what
/// could not be checked.
struct NodeView {
    snapshot: Snapshot,
    sandboxes: HashMap<String, BTreeSet<String>>,
    mounts: Vec<mounts::Mount>,
    notes: String,
}

async fn observe(ctx: &ProcessorContext, deadline: Deadline) -> Result<NodeView, ProcessorError> {
    let proc_root = ctx.node.proc_root.clone();
    let snapshot = blocking("the /proc scan", move || {
        scan::scan(&proc_root, deadline, scan::default_threads())
    })
    .await?
    .map_err(ProcessorError::Failed)?;
    let (sandboxes, mut notes) = sandboxes_by_pod(ctx, deadline).await;
    let mounts = match mounts::host_mounts(&ctx.node.proc_root) {
        Ok(m) => m,
        Err(e) => {
            notes.push_str(&format!("; mounts not checked: {e}"));
            Vec::new()
        }
    };
    Ok(NodeView {
        snapshot,
        sandboxes,
        mounts,
        notes,
    })
}

/// Judges one terminating pod of this node (the pod triage uses it): the facts gathered, the
/// verdict, and notes on what could not be checked.
pub async fn judge_one(
    ctx: &ProcessorContext,
    pod: &Pod,
) -> Result<(PodFacts, Verdict, String), ProcessorError> {
    let deadline = Deadline::within(ctx.timeout);
    let node = observe(ctx, deadline).await?;
    let pods_dir = ctx.node.kubelet_root.join("pods");
    let f = facts(
        ctx,
        pod,
        &node.snapshot,
        &node.sandboxes,
        &node.mounts,
        &pods_dir,
    );
    let verdict = rules::judge(&f, jiff::Timestamp::now());
    let partial = if node.snapshot.complete {
        ""
    } else {
        "; the /proc scan ran out of time, so some processes may be missing"
    };
    Ok((f, verdict, format!("{}{partial}", node.notes)))
}

/// The terminating pods to look at, and how many pods were checked.
async fn terminating_pods(
    ctx: &ProcessorContext,
    abnormal: &Abnormal,
) -> Result<(Vec<Pod>, usize), ProcessorError> {
    let (mut all, _) = pods::node_pods(ctx, abnormal).await?;
    if let Some(reference) = pods::reference(abnormal) {
        all.retain(|p| pods::referenced(abnormal, p));
        if all.is_empty() {
            // Not in podInformation or not listed for this node: ask for it by name.
            let (ns, name) = reference.split_once('/').unwrap_or(("default", &reference));
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(name).await {
                Ok(Some(p)) => all.push(p),
                Ok(None) => {
                    return Err(ProcessorError::NotIdentified(format!(
                        "pod {reference} does not exist: it is gone, not stuck"
                    )));
                }
                Err(e) => {
                    return Err(ProcessorError::Failed(format!(
                        "reading pod {reference}: {e}"
                    )));
                }
            }
        }
        if all.iter().all(|p| p.metadata.deletion_timestamp.is_none()) {
            return Err(ProcessorError::NotIdentified(format!(
                "pod {reference} is not terminating (it has no deletionTimestamp)"
            )));
        }
    }
    let checked = all.len();
    let terminating: Vec<Pod> = all
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .collect();
    if terminating.is_empty() {
        return Err(ProcessorError::NotIdentified(format!(
            "checked {checked} pods on node {}: none is terminating",
            ctx.node_name
        )));
    }
    Ok((terminating, checked))
}

/// Sandbox IDs by pod UID, from the runtime; empty with a note when it cannot be asked (the
/// cgroups still name the pod's processes).
async fn sandboxes_by_pod(
    ctx: &ProcessorContext,
    deadline: Deadline,
) -> (HashMap<String, BTreeSet<String>>, String) {
    let timeout = CRI_TIMEOUT.min(deadline.remaining());
    let asked = tokio::time::timeout(timeout, async {
        let mut c = CriClient::connect(&ctx.node.cri_sockets, timeout).await?;
        c.list_pod_sandboxes().await
    })
    .await;
    match asked {
        Ok(Ok(sandboxes)) => {
            let mut by_pod: HashMap<String, BTreeSet<String>> = HashMap::new();
            for s in sandboxes {
                if let Some(m) = s.metadata {
                    by_pod.entry(m.uid).or_default().insert(s.id);
                }
            }
            (by_pod, String::new())
        }
        Ok(Err(e)) => (
            HashMap::new(),
            format!("; the CRI runtime was not asked: {e}"),
        ),
        Err(_) => (
            HashMap::new(),
            format!("; the CRI runtime did not answer within {timeout:?}"),
        ),
    }
}

fn facts(
    ctx: &ProcessorContext,
    pod: &Pod,
    snap: &Snapshot,
    sandboxes: &HashMap<String, BTreeSet<String>>,
    host_mounts: &[mounts::Mount],
    pods_dir: &std::path::Path,
) -> PodFacts {
    let uid = pods::uid(pod).unwrap_or_default().to_owned();
    let sandbox_ids = sandboxes.get(&uid).cloned().unwrap_or_default();
    // Every ID a shim of this pod may serve: its sandboxes and the containers in its cgroups.
    let mut ids: BTreeSet<String> = sandbox_ids.clone();
    for p in &snap.processes {
        if p.pod_uid.as_deref() == Some(uid.as_str())
            && let Some(c) = &p.container_id
        {
            ids.insert(c.clone());
        }
    }
    let mut roles: HashMap<i32, Role> = HashMap::new();
    for p in &snap.processes {
        if p.pod_uid.as_deref() == Some(uid.as_str()) {
            let role = if p.runtime_monitor {
                Role::Shim
            } else if p
                .container_id
                .as_ref()
                .is_some_and(|c| sandbox_ids.contains(c))
            {
                Role::Sandbox
            } else {
                Role::Container
            };
            roles.insert(p.pid, role);
        } else if p.shim_for.as_ref().is_some_and(|s| ids.contains(s)) {
            roles.insert(p.pid, Role::Shim);
        }
    }
    // Below a shim of this pod run its containers, even where a cgroup does not say so (a
    // cgroup namespace may hide the path).
    let shims: BTreeSet<i32> = roles
        .iter()
        .filter(|(_, r)| **r == Role::Shim)
        .map(|(pid, _)| *pid)
        .collect();
    if !shims.is_empty() {
        let by_pid: HashMap<i32, &scan::ProcessInfo> =
            snap.processes.iter().map(|p| (p.pid, p)).collect();
        for p in &snap.processes {
            if roles.contains_key(&p.pid) || p.pod_uid.as_ref().is_some_and(|u| *u != uid) {
                continue;
            }
            let mut cur = p.ppid;
            for _ in 0..64 {
                if shims.contains(&cur) {
                    roles.insert(p.pid, Role::Container);
                    break;
                }
                match by_pid.get(&cur) {
                    Some(parent) if parent.ppid > 0 => cur = parent.ppid,
                    _ => break,
                }
            }
        }
    }
    let processes = snap
        .processes
        .iter()
        .filter_map(|p| {
            let role = *roles.get(&p.pid)?;
            Some(ProcessFact {
                pid: p.pid,
                ppid: p.ppid,
                command: if p.command.is_empty() {
                    format!("[{}]", p.name)
                } else {
                    p.command.join(" ")
                },
                state: p.status.clone(),
                container_id: p.container_id.clone(),
                role,
                start_time: p.start_time,
                ignores_sigterm: p.signals.ignores_sigterm(p.pid),
            })
        })
        .collect();
    let prefix = format!("{}/", pods_dir.join(&uid).display());
    let mounts = host_mounts
        .iter()
        .filter(|m| !uid.is_empty() && m.mount_point.starts_with(&prefix))
        .map(|m| m.mount_point.clone())
        .collect();
    let spec = pod.spec.as_ref();
    PodFacts {
        key: pods::key(pod),
        uid,
        deletion_timestamp: pod
            .metadata
            .deletion_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(jiff::Timestamp::now),
        grace_seconds: pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| spec.and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(DEFAULT_GRACE_SECONDS),
        finalizers: pod.metadata.finalizers.clone().unwrap_or_default(),
        processes,
        mounts,
        pre_stop: spec.is_some_and(|s| {
            s.containers
                .iter()
                .any(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()))
        }),
        node: ctx.node_name.clone(),
    }
}

/// What Kube Diagnoser wrote under `terminatingPodDiagnosis`: the whole Pods past their
/// deadline (`[]corev1.Pod`), in the order of the findings. `metadata.managedFields` is left out: it
/// says nothing about why a pod is stuck and would take most of the budget.
fn upstream_pods(judged: &[(&Pod, i64)]) -> Vec<Pod> {
    judged
        .iter()
        // As Kube Diagnoser: a pod whose state is Unknown (its node lost) is not called stuck.
        .filter(|(pod, overdue_seconds)| {
            *overdue_seconds >= 0
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Unknown")
        })
        .map(|(pod, _)| {
            let mut pod = (*pod).clone();
            pod.metadata.managed_fields = None;
            pod
        })
        .collect()
}

fn conclude(
    facts: &[(Pod, PodFacts)],
    checked: usize,
    cri_note: &str,
    snap: &Snapshot,
    max_output_bytes: usize,
) -> Result<ProcessorOutput, ProcessorError> {
    let now = jiff::Timestamp::now();
    let mut judged: Vec<(&Pod, &PodFacts, Verdict)> = facts
        .iter()
        .map(|(pod, f)| (pod, f, rules::judge(f, now)))
        .collect();
    // Pods with causes first, the longest overdue first.
    judged.sort_by_key(|(_, _, v)| (v.causes.is_empty(), -v.overdue_seconds));
    let entries: Vec<Value> = judged
        .iter()
        .map(|(pod, f, v)| {
            json!({
                "metadata": {
                    "name": pod.metadata.name,
                    "namespace": pod.metadata.namespace,
                    "uid": f.uid,
                    "deletionTimestamp": f.deletion_timestamp.to_string(),
                    "deletionGracePeriodSeconds": f.grace_seconds,
                    "finalizers": f.finalizers,
                },
                "deadline": f.deadline().to_string(),
                "overdueSeconds": v.overdue_seconds,
                "causes": v.causes,
                "note": v.note,
                "processes": f.processes,
                "mounts": f.mounts,
            })
        })
        .collect();
    let signals: Vec<&Signal> = judged
        .iter()
        .flat_map(|(_, _, v)| v.causes.iter().flat_map(|c| c.signals.iter()))
        .collect();
    let overdue = upstream_pods(
        &judged
            .iter()
            .map(|(pod, _, v)| (*pod, v.overdue_seconds))
            .collect::<Vec<_>>(),
    );
    // Three quarters of the budget for the two lists (half each), the rest for the signals.
    let share = output_budget(max_output_bytes) * 3 / 8;
    let (kept, truncation) = cap_list(&entries, share);
    let (pods_kept, pods_truncation) = cap_list(&overdue, share);
    let mut out = ProcessorOutput::default()
        .with_context(TERMINATING_POD_FINDINGS, Value::Array(kept))
        .with_context(TERMINATING_POD_DIAGNOSIS, Value::Array(pods_kept));
    for (key, t) in [
        (TERMINATING_POD_FINDINGS, truncation),
        (TERMINATING_POD_DIAGNOSIS, pods_truncation),
    ] {
        if let Some(t) = t {
            out = out.with_context(
                &truncated_key(key),
                serde_json::to_value(t).unwrap_or_default(),
            );
        }
    }
    let partial = if snap.complete {
        ""
    } else {
        "; the /proc scan ran out of time, so some processes may be missing"
    };
    let stuck: Vec<&(&Pod, &PodFacts, Verdict)> = judged
        .iter()
        .filter(|(_, _, v)| !v.causes.is_empty())
        .collect();
    let Some((_, first, verdict)) = stuck.first() else {
        let notes = judged
            .iter()
            .map(|(_, f, v)| format!("{}: {}", f.key, v.note))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ProcessorError::NotIdentified(format!(
            "checked {checked} pods, {} terminating, for finalizers, live processes (cgroups and runtime shims), SIGTERM handling and mounted volumes: {notes}{cri_note}{partial}",
            judged.len()
        )));
    };
    if !signals.is_empty() {
        out = out.with_context(
            SIGNAL_RECOVERY,
            serde_json::to_value(&signals).unwrap_or_default(),
        );
    }
    let causes = verdict
        .causes
        .iter()
        .map(|c| c.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let when = if verdict.overdue_seconds >= 0 {
        format!(
            "is {} s past its deletion deadline",
            verdict.overdue_seconds
        )
    } else {
        "is terminating".to_owned()
    };
    let more = if stuck.len() > 1 {
        format!(" (and {} more stuck pods)", stuck.len() - 1)
    } else {
        String::new()
    };
    let summary = format!("pod {} {when}: {causes}{more}", first.key);
    let evidence = stuck
        .iter()
        .flat_map(|(_, _, v)| v.causes.iter().flat_map(|c| c.evidence.iter().cloned()))
        .take(50)
        .collect();
    out.message = format!(
        "{}: {summary}; {} signal(s) proposed in {SIGNAL_RECOVERY}{cri_note}{partial}",
        verdict.causes[0].reason,
        signals.len()
    );
    Ok(out.with_root_cause(RootCause {
        summary,
        reason: verdict.causes[0].reason.into(),
        processor: String::new(),
        suggestion: verdict.causes[0].suggestion.clone(),
        evidence,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminating_pod_diagnosis_holds_the_overdue_pods_as_kubernetes_pods() {
        let pod = |name: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"),
                    "deletionTimestamp": "2024-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30,
                    "finalizers": ["example.com/hold"],
                    "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
                "spec": {"containers": [{"name": "app", "image": "busybox"}]},
                "status": {"phase": "Running"},
            }))
            .unwrap()
        };
        let (late, early, mut lost) = (pod("late"), pod("early"), pod("lost"));
        lost.status.as_mut().unwrap().phase = Some("Unknown".into());
        let out = upstream_pods(&[(&late, 120), (&early, -5), (&lost, 300)]);
        let json = serde_json::to_value(&out).unwrap();
        // Decoded as a Go plugin decodes `[]corev1.Pod` (k8s-openapi mirrors those types).
        let decoded: Vec<Pod> = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            decoded.len(),
            1,
            "only the pod past its deadline and not Unknown: {json}"
        );
        assert_eq!(decoded[0].metadata.name.as_deref(), Some("late"));
        assert_eq!(
            json[0]["metadata"]["deletionTimestamp"],
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(json[0]["spec"]["containers"][0]["name"], "app");
        assert!(json[0]["metadata"].get("managedFields").is_none());
    }
}
