//! A cordoned node whose drain cannot finish: pods on it are protected by a
//! PodDisruptionBudget that allows no eviction, and `kubectl drain` retries those evictions
//! forever. The budget's own verdict is `workload::pdb_blocking`'s; this names the node, the
//! budgets and the pods on it they hold.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kdiag_api::Evidence;
use kdiag_collectors::pod_detail::NodeDetail;

use super::finding::{Finding, Rank};
use crate::workload::{PdbFacts, pdb_blocking};

/// Ranks below pressure: the node works, it only cannot be emptied.
pub const WEIGHT_DRAIN: i64 = 40;

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions, as the apiserver
/// reads them). An empty selector matches nothing here: a policy/v1beta1 budget with one
/// protects no pod, and guessing otherwise would blame a budget for pods it does not hold.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exprs = selector.match_expressions.as_deref().unwrap_or_default();
    let pairs = selector.match_labels.as_ref();
    if exprs.is_empty() && pairs.is_none_or(BTreeMap::is_empty) {
        return false;
    }
    pairs
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && exprs.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match (e.operator.as_str(), labels.get(&e.key)) {
                ("In", Some(v)) => values.contains(v),
                ("In", None) => false,
                ("NotIn", Some(v)) => !values.contains(v),
                ("NotIn", None) => true,
                ("Exists", v) => v.is_some(),
                ("DoesNotExist", v) => v.is_none(),
                _ => false,
            }
        })
}

/// A pod a drain must evict: not terminating and not finished (a finished pod is deleted
/// without asking any budget).
fn evictable(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// For a cordoned node (`spec.unschedulable`), one finding per budget that allows no
/// eviction of a pod on it. `pods` are the node's pods, `budgets` every namespace's.
pub fn blocked_drain(
    node: &NodeDetail,
    pods: &[Pod],
    budgets: &[PodDisruptionBudget],
    node_key: &str,
) -> Vec<Finding> {
    if !node.unschedulable {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pdb in budgets {
        let ns = pdb.metadata.namespace.as_deref().unwrap_or_default();
        let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        let held: Vec<Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns) && evictable(p))
            .filter(|p| {
                selects(
                    selector,
                    p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
                )
            })
            .cloned()
            .collect();
        if held.is_empty() {
            continue;
        }
        let key = format!("{ns}/{}", pdb.metadata.name.as_deref().unwrap_or_default());
        let Some(verdict) = pdb_blocking(&PdbFacts {
            key,
            pdb: Some(pdb.clone()),
            pods: held.clone(),
        }) else {
            continue;
        };
        let names = held
            .iter()
            .take(5)
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ");
        let more = if held.len() > 5 {
            format!(" and {} more", held.len() - 5)
        } else {
            String::new()
        };
        // Unready pods that use up the budget are a different fix from a budget that can
        // never allow an eviction.
        let reason = match verdict.reason.as_str() {
            "PodDisruptionBudgetPodsUnhealthy" => "NodeDrainBlockedByUnhealthyPods",
            _ => "NodeDrainBlocked",
        };
        let f = Finding::new(
            reason,
            Rank::Node,
            format!(
                "node {} is cordoned and cannot be drained: {} pod(s) on it ({names}{more}) may not be evicted, because {}",
                node.name,
                held.len(),
                verdict.summary
            ),
            format!(
                "{} kubectl drain retries the evictions until the budget allows one; kubectl uncordon {} if no drain is meant.",
                verdict.suggestion, node.name
            ),
        )
        .weighted(WEIGHT_DRAIN)
        .with(Evidence {
            kind: "NodeSpec".into(),
            object: format!("node/{}", node.name),
            message: "spec.unschedulable true (cordoned): new pods stay off it, a drain evicts the ones there".into(),
            context_key: node_key.to_owned(),
            timestamp: None,
        })
        .with_all(verdict.evidence);
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node(unschedulable: bool) -> NodeDetail {
        NodeDetail {
            name: "n1".into(),
            unschedulable,
            ..Default::default()
        }
    }

    fn pod(name: &str, app: &str) -> Pod {
        from(
            json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    fn budget(name: &str, app: &str, allowed: i32) -> PodDisruptionBudget {
        from(json!({"metadata": {"name": name, "namespace": "shop"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
            "status": {"disruptionsAllowed": allowed, "expectedPods": 1, "currentHealthy": 1,
                "desiredHealthy": 1}}))
    }

    #[test]
    fn a_cordoned_node_names_each_budget_that_holds_a_pod_on_it_and_the_pods() {
        let pods = [
            pod("web-1", "web"),
            pod("db-1", "db"),
            pod("cache-1", "cache"),
        ];
        let budgets = [
            budget("web", "web", 0),
            budget("db", "db", 0),
            budget("cache", "cache", 1),
            budget("elsewhere", "other", 0),
        ];
        let found = blocked_drain(&node(true), &pods, &budgets, "key");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert_eq!(found[0].reason, "NodeDrainBlocked");
        assert_eq!(
            found[0].summary,
            "node n1 is cordoned and cannot be drained: 1 pod(s) on it (web-1) may not be evicted, because PodDisruptionBudget shop/web allows no eviction (disruptionsAllowed 0), so draining the nodes of its pods waits forever: its minAvailable 1 requires all 1 pod(s) it protects to stay healthy (web-1 on node n1)"
        );
        assert!(found[1].summary.contains("PodDisruptionBudget shop/db"));
        assert!(
            found[0]
                .evidence
                .iter()
                .any(|e| e.kind == "PodDisruptionBudgetStatus"
                    && e.object == "poddisruptionbudget/shop/web"),
            "{:?}",
            found[0].evidence
        );
        assert!(found[0].suggestion.contains("kubectl uncordon n1"));
    }

    #[test]
    fn a_schedulable_node_has_no_drain_to_block() {
        let found = blocked_drain(
            &node(false),
            &[pod("web-1", "web")],
            &[budget("web", "web", 0)],
            "key",
        );
        assert!(found.is_empty());
    }

    #[test]
    fn finished_pods_and_empty_selectors_block_nothing() {
        let mut done = pod("job-1", "web");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut everything = budget("all", "web", 0);
        everything.spec.as_mut().unwrap().selector = Some(LabelSelector::default());
        let found = blocked_drain(
            &node(true),
            &[done, pod("web-2", "web")],
            &[everything],
            "key",
        );
        assert!(found.is_empty(), "{found:#?}");
        assert!(
            !blocked_drain(
                &node(true),
                &[pod("web-2", "web")],
                &[budget("web", "web", 0)],
                "key"
            )
            .is_empty()
        );
    }

    #[test]
    fn match_expressions_are_read_as_the_apiserver_reads_them() {
        let s: LabelSelector = from(json!({"matchLabels": {"app": "web"}, "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "canary", "operator": "DoesNotExist"}]}));
        let labels = |v: Value| -> BTreeMap<String, String> { from(v) };
        assert!(selects(&s, &labels(json!({"app": "web", "tier": "a"}))));
        assert!(!selects(&s, &labels(json!({"app": "web", "tier": "c"}))));
        assert!(!selects(
            &s,
            &labels(json!({"app": "web", "tier": "a", "canary": "1"}))
        ));
    }
}
