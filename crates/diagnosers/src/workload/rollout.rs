//! A Deployment or StatefulSet that does not reach its replicas: the pods cannot be created
//! (the `FailedCreate` of its ReplicaSet, or of the StatefulSet itself), they do not become
//! ready (the first such pod's own cause), it is paused, or it gave up (`ProgressDeadlineExceeded`).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::{Evidence, RootCause};

use super::create::{AdmissionWebhook, Refused};
use super::{oldest_unready, pod_cause, pod_evidence, ready};

/// A Deployment with what it owns, as read from the apiserver.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFacts {
    /// namespace/name looked for.
    pub key: String,
    pub deployment: Option<Deployment>,
    /// The ReplicaSets it owns.
    pub replica_sets: Vec<ReplicaSet>,
    /// The pods its selector matches.
    pub pods: Vec<Pod>,
    /// The Events of its newest ReplicaSet ([`newest_replica_set`]).
    pub events: Vec<Event>,
    /// The namespace's ResourceQuotas.
    pub quotas: Vec<ResourceQuota>,
    /// The cluster's admission webhooks (empty when they cannot be read).
    pub webhooks: Vec<AdmissionWebhook>,
}

/// A StatefulSet with its pods and Events, as read from the apiserver.
#[derive(Debug, Clone, Default)]
pub struct StatefulSetFacts {
    pub key: String,
    pub stateful_set: Option<StatefulSet>,
    pub pods: Vec<Pod>,
    /// The StatefulSet's own Events (it creates its pods itself).
    pub events: Vec<Event>,
    pub quotas: Vec<ResourceQuota>,
    /// The cluster's admission webhooks (empty when they cannot be read).
    pub webhooks: Vec<AdmissionWebhook>,
}

/// The ReplicaSet of the Deployment's current revision (annotation
/// `deployment.kubernetes.io/revision`, else the newest).
pub fn newest_replica_set(sets: &[ReplicaSet]) -> Option<&ReplicaSet> {
    sets.iter().max_by_key(|rs| {
        (
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("deployment.kubernetes.io/revision"))
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0),
            rs.metadata.creation_timestamp.clone().map(|t| t.0),
        )
    })
}

/// The latest `FailedCreate` among `events`, as evidence with its message.
fn failed_create(events: &[Event], object: &str) -> Option<(Evidence, String)> {
    let e = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .max_by_key(|e| e.last_timestamp.clone().map(|t| t.0))?;
    let message = e.message.clone().unwrap_or_default();
    Some((
        Evidence {
            kind: "Event".into(),
            object: object.into(),
            message: format!("FailedCreate ({} time(s)): {message}", e.count.unwrap_or(1)),
            timestamp: e.last_timestamp.clone(),
            ..Default::default()
        },
        message,
    ))
}

/// Why a Deployment does not reach its replicas, or None when it is rolled out.
pub fn deployment_stuck(f: &DeploymentFacts) -> Option<RootCause> {
    let ns = f.key.split('/').next().unwrap_or_default();
    let Some(d) = &f.deployment else {
        return Some(not_found("Deployment", &f.key));
    };
    let spec = d.spec.as_ref();
    let st = d.status.clone().unwrap_or_default();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let what = format!("Deployment {}", f.key);
    let conditions = st.conditions.clone().unwrap_or_default();
    let status_evidence = Evidence {
        kind: "DeploymentStatus".into(),
        object: format!("deployment/{}", f.key),
        message: format!(
            "{want} desired, {} updated, {} ready, {} available; conditions: {}",
            st.updated_replicas.unwrap_or(0),
            st.ready_replicas.unwrap_or(0),
            st.available_replicas.unwrap_or(0),
            conditions
                .iter()
                .map(|c| format!(
                    "{}={} {}",
                    c.type_,
                    c.status,
                    c.reason.as_deref().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ..Default::default()
    };
    let deadline = conditions
        .iter()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| {
            (
                format!(
                    "it gave up after its progress deadline of {} s ({})",
                    spec.and_then(|s| s.progress_deadline_seconds)
                        .unwrap_or(600),
                    c.message.as_deref().unwrap_or("ProgressDeadlineExceeded")
                ),
                c.last_transition_time.clone(),
            )
        });
    let rs = newest_replica_set(&f.replica_sets);
    let rs_key = rs
        .map(|r| format!("{ns}/{}", r.metadata.name.as_deref().unwrap_or_default()))
        .unwrap_or_default();
    let own_pods: Vec<Pod> = match rs.and_then(|r| r.metadata.uid.as_deref()) {
        Some(uid) => f
            .pods
            .iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
            })
            .cloned()
            .collect(),
        None => f.pods.clone(),
    };

    // Pods that cannot be created: the ReplicaSet's ReplicaFailure condition holds the last
    // refusal while it lasts; its FailedCreate events count them.
    if let Some(rs) = rs {
        let rs_want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(want);
        let rs_have = rs.status.as_ref().map_or(0, |s| s.replicas);
        let object = format!("replicaset/{rs_key}");
        let from_condition = rs
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .map(|c| {
                let message = c.message.clone().unwrap_or_default();
                (
                    Evidence {
                        kind: "ReplicaSetStatus".into(),
                        object: object.clone(),
                        message: format!(
                            "condition ReplicaFailure {}: {message}; {rs_have} of {rs_want} pods exist",
                            c.reason.as_deref().unwrap_or("")
                        ),
                        timestamp: c.last_transition_time.clone(),
                        ..Default::default()
                    },
                    message,
                )
            });
        let refusal = from_condition.or_else(|| {
            (rs_have < rs_want)
                .then(|| failed_create(&f.events, &object))
                .flatten()
        });
        if let Some((seen, message)) = refusal {
            let mut cause = Refused {
                what: &what,
                creator: &format!("its ReplicaSet {rs_key}"),
                have: rs_have,
                want: rs_want,
                message: &message,
                seen,
                quotas: &f.quotas,
                namespace: ns,
                webhooks: &f.webhooks,
                template: rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| t.spec.as_ref())
                    .or(spec.and_then(|s| s.template.spec.as_ref())),
            }
            .cause();
            // The event says how often, the condition what it was: keep both.
            if cause.evidence[0].kind != "Event"
                && let Some((e, _)) = failed_create(&f.events, &object)
            {
                cause.evidence.insert(1, e);
            }
            cause.evidence.push(status_evidence);
            return Some(with_deadline(cause, &deadline));
        }
    }

    if spec.and_then(|s| s.paused) == Some(true) && st.updated_replicas.unwrap_or(0) < want {
        return Some(RootCause {
            reason: "DeploymentPaused".into(),
            summary: format!(
                "{what} is paused with {} of {want} pods updated: its rollout does not go on until it is resumed",
                st.updated_replicas.unwrap_or(0)
            ),
            suggestion: format!(
                "kubectl rollout resume deployment -n {ns} {}",
                f.key.split('/').nth(1).unwrap_or_default()
            ),
            evidence: vec![status_evidence],
            ..Default::default()
        });
    }

    let ready_count = st.ready_replicas.unwrap_or(0);
    let unready: Vec<&Pod> = own_pods.iter().filter(|p| !ready(p)).collect();
    if let Some(first) = oldest_unready(&own_pods) {
        let mut cause = not_ready(
            &what,
            ready_count,
            want,
            first,
            unready.len(),
            "RolloutPodsNotReady",
        );
        cause.evidence.push(status_evidence);
        return Some(with_deadline(cause, &deadline));
    }

    deadline.map(|(why, since)| RootCause {
        reason: "ProgressDeadlineExceeded".into(),
        summary: format!(
            "{what} stopped progressing: {why}; now {ready_count} of {want} ready, and none of the {} pod(s) of ReplicaSet {rs_key} is unready or refused",
            own_pods.len()
        ),
        suggestion: "kubectl rollout status and kubectl describe deployment show what it waited for; kubectl rollout undo goes back to the previous revision.".into(),
        evidence: vec![status_evidence],
        since,
        ..Default::default()
    })
}

/// Why a StatefulSet does not reach its replicas, or None when all its pods are ready.
pub fn statefulset_stuck(f: &StatefulSetFacts) -> Option<RootCause> {
    let ns = f.key.split('/').next().unwrap_or_default();
    let Some(s) = &f.stateful_set else {
        return Some(not_found("StatefulSet", &f.key));
    };
    let spec = s.spec.as_ref();
    let st = s.status.clone().unwrap_or_default();
    let want = spec.and_then(|s| s.replicas).unwrap_or(1);
    let what = format!("StatefulSet {}", f.key);
    let ordered = spec
        .and_then(|s| s.pod_management_policy.as_deref())
        .is_none_or(|p| p == "OrderedReady");
    let object = format!("statefulset/{}", f.key);
    let status_evidence = Evidence {
        kind: "StatefulSetStatus".into(),
        object: object.clone(),
        message: format!(
            "{want} desired, {} created, {} ready, {} updated; podManagementPolicy {}",
            st.replicas,
            st.ready_replicas.unwrap_or(0),
            st.updated_replicas.unwrap_or(0),
            if ordered { "OrderedReady" } else { "Parallel" }
        ),
        ..Default::default()
    };
    if st.replicas < want
        && let Some((seen, message)) = failed_create(&f.events, &object)
    {
        let mut cause = Refused {
            what: &what,
            creator: "it",
            have: st.replicas,
            want,
            message: &message,
            seen,
            quotas: &f.quotas,
            namespace: ns,
            webhooks: &f.webhooks,
            template: spec.and_then(|s| s.template.spec.as_ref()),
        }
        .cause();
        cause.evidence.push(status_evidence);
        return Some(cause);
    }
    // OrderedReady creates pod N+1 only once pod N is ready: the lowest unready ordinal is the
    // one everything waits for.
    let mut pods: Vec<&Pod> = f.pods.iter().collect();
    pods.sort_by_key(|p| ordinal(p));
    let unready: Vec<&Pod> = pods.iter().copied().filter(|p| !ready(p)).collect();
    let first = unready.first()?;
    let mut cause = not_ready(
        &what,
        st.ready_replicas.unwrap_or(0),
        want,
        first,
        unready.len(),
        "RolloutPodsNotReady",
    );
    if ordered && st.replicas < want {
        cause.summary.push_str(&format!(
            "; with podManagementPolicy OrderedReady the {} pod(s) after it are not created until it is ready",
            want - st.replicas
        ));
    }
    cause.evidence.push(status_evidence);
    Some(cause)
}

fn ordinal(p: &Pod) -> (u64, String) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let n = name
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name)
}

pub(super) fn not_found(kind: &str, key: &str) -> RootCause {
    RootCause {
        reason: format!("{kind}NotFound"),
        summary: format!("{kind} {key} does not exist"),
        suggestion: format!(
            "check the name and the namespace (kubectl get {} -A)",
            kind.to_lowercase()
        ),
        ..Default::default()
    }
}

/// `what` has `ready` of `want` ready; `first` is the pod to look at, of `count` unready.
pub(super) fn not_ready(
    what: &str,
    ready: i32,
    want: i32,
    first: &Pod,
    count: usize,
    reason: &str,
) -> RootCause {
    let others = if count > 1 {
        format!(" ({} other pod(s) not ready either)", count - 1)
    } else {
        String::new()
    };
    RootCause {
        reason: reason.into(),
        summary: format!(
            "{what} has {ready} of {want} pods ready: pod {} is not ready: {}{others}",
            crate::pods::key(first),
            pod_cause(first)
        ),
        suggestion: format!(
            "kubectl diag run --pod {} names that pod's own root cause; fix it in the pod template and the controller replaces the pods.",
            crate::pods::key(first)
        ),
        evidence: vec![pod_evidence(first)],
        since: first.metadata.creation_timestamp.clone(),
        ..Default::default()
    }
}

fn with_deadline(mut cause: RootCause, deadline: &Option<(String, Option<Time>)>) -> RootCause {
    if let Some((why, _)) = deadline {
        cause.summary.push_str(&format!("; {why}"));
    }
    cause
}

#[cfg(test)]
mod tests;
