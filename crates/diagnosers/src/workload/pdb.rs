//! A PodDisruptionBudget that allows no eviction, so `kubectl drain` of the nodes of its pods
//! waits forever: its rule leaves no room (minAvailable equal to the pods it protects,
//! maxUnavailable 0), or some of its pods are not ready and use up what it allows.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kdiag_api::{Evidence, RootCause};

use super::rollout::not_found;
use super::{pod_cause, pod_evidence, ready};

/// A PodDisruptionBudget and the pods its selector matches, as read from the apiserver (a
/// `policy/v1beta1` one has the same fields).
#[derive(Debug, Clone, Default)]
pub struct PdbFacts {
    pub key: String,
    pub pdb: Option<PodDisruptionBudget>,
    pub pods: Vec<Pod>,
}

fn int_or_string(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// Why the budget blocks evictions, or None when it allows at least one (or protects no pod).
pub fn pdb_blocking(f: &PdbFacts) -> Option<RootCause> {
    let Some(pdb) = &f.pdb else {
        return Some(not_found("PodDisruptionBudget", &f.key));
    };
    let st = pdb.status.clone().unwrap_or_default();
    if st.disruptions_allowed > 0 || st.expected_pods == 0 {
        return None;
    }
    let spec = pdb.spec.clone().unwrap_or_default();
    let rule = match (&spec.min_available, &spec.max_unavailable) {
        (Some(m), _) => format!("minAvailable {}", int_or_string(m)),
        (None, Some(m)) => format!("maxUnavailable {}", int_or_string(m)),
        (None, None) => "no minAvailable or maxUnavailable".into(),
    };
    let head = format!(
        "PodDisruptionBudget {} allows no eviction (disruptionsAllowed 0), so draining the nodes of its pods waits",
        f.key
    );
    let live: Vec<&Pod> = f
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let where_ = |p: &Pod| {
        format!(
            "{}{}",
            p.metadata.name.as_deref().unwrap_or_default(),
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .map(|n| format!(" on node {n}"))
                .unwrap_or_default()
        )
    };
    let protected = live
        .iter()
        .take(5)
        .map(|p| where_(p))
        .collect::<Vec<_>>()
        .join(", ");
    let mut evidence = vec![Evidence {
        kind: "PodDisruptionBudgetStatus".into(),
        object: format!("poddisruptionbudget/{}", f.key),
        message: format!(
            "{rule}; {} pod(s) expected, {} healthy, {} must stay healthy, 0 disruptions allowed",
            st.expected_pods, st.current_healthy, st.desired_healthy
        ),
        ..Default::default()
    }];
    let unhealthy: Vec<&Pod> = live.iter().copied().filter(|p| !ready(p)).collect();
    // A rule that needs every pod healthy blocks even when all are: that comes first, since
    // making pods ready would not help.
    if st.desired_healthy >= st.expected_pods {
        evidence.extend(live.iter().take(3).map(|p| pod_evidence(p)));
        return Some(RootCause {
            reason: "PodDisruptionBudgetTooStrict".into(),
            summary: format!(
                "{head} forever: its {rule} requires all {} pod(s) it protects to stay healthy ({protected})",
                st.expected_pods
            ),
            suggestion: "Lower minAvailable below the number of replicas (or set maxUnavailable to at least 1), or scale the workload up so that one pod may go; drains go on once disruptionsAllowed is above 0.".into(),
            evidence,
            ..Default::default()
        });
    }
    let first = unhealthy.first()?;
    evidence.extend(unhealthy.iter().take(3).map(|p| pod_evidence(p)));
    Some(RootCause {
        reason: "PodDisruptionBudgetPodsUnhealthy".into(),
        summary: format!(
            "{head}: its {rule} needs {} of its {} pod(s) healthy and only {} are; {} not ready, the first, {}, because {}",
            st.desired_healthy,
            st.expected_pods,
            st.current_healthy,
            unhealthy.len(),
            where_(first),
            pod_cause(first)
        ),
        suggestion: format!(
            "Make the unready pods ready (kubectl diag run --pod {} names its own cause); each pod that becomes healthy allows one more eviction.",
            crate::pods::key(first)
        ),
        evidence,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn pod(name: &str, ready: bool) -> Value {
        json!({"metadata": {"name": name, "namespace": "shop"}, "spec": {"nodeName": "vm", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "app", "ready": ready, "restartCount": 0, "image": "x", "imageID": "",
                    "state": if ready { json!({"running": {}}) } else { json!({"waiting": {"reason": "ImagePullBackOff"}}) }}]}})
    }

    fn facts(spec: Value, status: Value, pods: Value) -> PdbFacts {
        PdbFacts {
            key: "shop/web".into(),
            pdb: Some(from(
                json!({"metadata": {"name": "web", "namespace": "shop"},
                "spec": spec, "status": status}),
            )),
            pods: from(pods),
        }
    }

    #[test]
    fn min_available_equal_to_the_replicas_blocks_every_drain() {
        let f = facts(
            json!({"minAvailable": 2}),
            json!({"disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}),
            json!([pod("web-a", true), pod("web-b", true)]),
        );
        let c = pdb_blocking(&f).unwrap();
        assert_eq!(c.reason, "PodDisruptionBudgetTooStrict");
        assert_eq!(
            c.summary,
            "PodDisruptionBudget shop/web allows no eviction (disruptionsAllowed 0), so draining the nodes of its pods waits forever: its minAvailable 2 requires all 2 pod(s) it protects to stay healthy (web-a on node vm, web-b on node vm)"
        );
    }

    #[test]
    fn unready_pods_that_use_up_the_budget_are_named_with_their_cause() {
        let f = facts(
            json!({"maxUnavailable": 1}),
            json!({"disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 3}),
            json!([pod("web-a", true), pod("web-b", false), pod("web-c", true)]),
        );
        let c = pdb_blocking(&f).unwrap();
        assert_eq!(c.reason, "PodDisruptionBudgetPodsUnhealthy");
        assert!(
            c.summary.ends_with("its maxUnavailable 1 needs 2 of its 3 pod(s) healthy and only 2 are; 1 not ready, the first, web-b on node vm, because container app is waiting with ImagePullBackOff"),
            "{}",
            c.summary
        );
    }

    #[test]
    fn a_budget_that_allows_an_eviction_blocks_nothing() {
        let f = facts(
            json!({"minAvailable": 1}),
            json!({"disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2}),
            json!([pod("web-a", true), pod("web-b", true)]),
        );
        assert_eq!(pdb_blocking(&f), None);
    }
}
