//! An Abnormal with neither `spec.nodeName` nor `spec.podReference`: Kube Diagnoser v0.1.0–v0.1.5
//! ran it on every node's agent, all writing the one object. kdiag fans it out instead: one child
//! Abnormal per node (owned by the parent, so deleting the parent deletes them), each admitted
//! and run as any other, and the parent's status summarises them. Bounded by the controller's
//! `--fan-out-max-nodes`; with 0, such an Abnormal is rejected (MissingTarget). Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kdiag_api::labels::{FAN_OUT_PARENT_LABEL, KUBE_DIAGNOSER_VERSION_ANNOTATION};
use kdiag_api::{
    Abnormal, AbnormalConditionType, AbnormalPhase, AbnormalStatus, CauseCandidate,
    ConditionStatus, RootCause,
};
use serde::{Deserialize, Serialize};

use crate::hash::fnv1a;
use crate::set_condition;

/// The `status.context` key of a fanned-out parent: one [`Child`] per node.
pub const FAN_OUT_CONTEXT_KEY: &str = "fanOut";

/// The reason of a fanned-out Abnormal that failed on at least one node.
pub const FAN_OUT_FAILED: &str = "FanOutFailed";

/// The reason of one refused for having more nodes than allowed.
pub const FAN_OUT_TOO_LARGE: &str = "FanOutTooLarge";

/// True for an Abnormal that names no target: it runs on every node.
pub fn fans_out(a: &Abnormal) -> bool {
    a.spec.node_name.is_empty() && a.spec.pod_reference.is_none()
}

/// One node's share, as the parent's `status.context.fanOut[]` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Child {
    pub node: String,
    /// The child Abnormal's name (same namespace).
    pub abnormal: String,
    /// Its phase; empty until admitted, `Deleted` if it was deleted before it ended.
    #[serde(default)]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_cause: String,
}

/// The name of the child for `node`: `<parent>.<node>`, or, when that is too long for a name,
/// a prefix of it and a hash of the node.
pub fn child_name(parent: &str, node: &str) -> String {
    let name = format!("{parent}.{node}");
    if name.len() <= 253 {
        return name;
    }
    let prefix: String = parent.chars().take(200).collect();
    format!("{prefix}.{:016x}", fnv1a(node))
}

/// The child Abnormal for `node`: the parent's spec (as admission completed it) on that node,
/// owned by the parent and labelled with its uid.
pub fn child(parent: &Abnormal, spec_from: &Abnormal, node: &str) -> Abnormal {
    let name = parent.metadata.name.clone().unwrap_or_default();
    let uid = parent.metadata.uid.clone().unwrap_or_default();
    let mut spec = spec_from.spec.clone();
    spec.node_name = node.to_owned();
    let mut child = Abnormal::new(&child_name(&name, node), spec);
    child.metadata.namespace = parent.metadata.namespace.clone();
    child.metadata.labels = Some([(FAN_OUT_PARENT_LABEL.to_owned(), uid.clone())].into());
    if let Some(v) = parent
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KUBE_DIAGNOSER_VERSION_ANNOTATION))
    {
        child.metadata.annotations =
            Some([(KUBE_DIAGNOSER_VERSION_ANNOTATION.to_owned(), v.clone())].into());
    }
    child.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "diagnosis.netease.com/v1".into(),
        kind: "Abnormal".into(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    child
}

/// The parent's status once its children exist: accepted, with one pending entry per node.
pub fn accept(status: &mut AbnormalStatus, parent: &str, nodes: &[String], now: &Time) {
    let children: Vec<Child> = nodes
        .iter()
        .map(|n| Child {
            node: n.clone(),
            abnormal: child_name(parent, n),
            phase: String::new(),
            reason: String::new(),
            message: String::new(),
            root_cause: String::new(),
        })
        .collect();
    status.phase = Some(AbnormalPhase::InformationCollecting);
    status.start_time = Some(now.clone());
    status.reason.clear();
    status.message = format!(
        "runs on every node: one Abnormal per node ({} nodes), named {}",
        nodes.len(),
        child_name(parent, "<node>")
    );
    status.context.get_or_insert_default().insert(
        FAN_OUT_CONTEXT_KEY.into(),
        serde_json::to_value(&children).unwrap_or_default(),
    );
    set_condition(
        &mut status.conditions,
        AbnormalConditionType::Accepted,
        ConditionStatus::True,
        "FannedOut",
        &format!(
            "no spec.nodeName or spec.podReference: fanned out to {} nodes ({})",
            nodes.len(),
            nodes.join(", ")
        ),
        now,
    );
}

/// The children the parent's status lists.
pub fn children(status: &AbnormalStatus) -> Vec<Child> {
    status
        .context
        .as_ref()
        .and_then(|c| c.get(FAN_OUT_CONTEXT_KEY))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// A child as it stands: its Abnormal, or None once it is gone.
pub fn observe(entry: &mut Child, child: Option<&Abnormal>) {
    match child {
        None => {
            entry.phase = "Deleted".into();
            entry.message = "deleted before it ended".into();
        }
        Some(a) => {
            let st = a.status.clone().unwrap_or_default();
            entry.phase = st.phase.map(|p| p.as_str().to_owned()).unwrap_or_default();
            entry.reason = st.reason;
            entry.message = st.message;
            entry.root_cause = st.root_cause.map(|r| r.summary).unwrap_or_default();
        }
    }
}

fn is_final(entry: &Child) -> bool {
    matches!(entry.phase.as_str(), "Succeeded" | "Failed" | "Deleted")
}

/// Brings the parent's status up to date with its children; true when it changed. Once every
/// child has ended, the parent ends: Succeeded if every one did, else Failed (FanOutFailed)
/// naming each node that failed, and the root causes found, node by node.
pub fn summarise(
    status: &mut AbnormalStatus,
    observed: Vec<Child>,
    root_causes: Vec<(String, RootCause)>,
) -> bool {
    let before = status.clone();
    status.context.get_or_insert_default().insert(
        FAN_OUT_CONTEXT_KEY.into(),
        serde_json::to_value(&observed).unwrap_or_default(),
    );
    let done = observed.iter().filter(|c| is_final(c)).count();
    let succeeded = observed.iter().filter(|c| c.phase == "Succeeded").count();
    if done < observed.len() {
        status.message = format!(
            "runs on every node: {done} of {} nodes done ({succeeded} succeeded)",
            observed.len()
        );
        return *status != before;
    }
    let mut causes = root_causes.into_iter();
    if let Some((node, first)) = causes.next() {
        let mut cause = first;
        cause.summary = format!("on node {node}: {}", cause.summary);
        cause.others = causes
            .map(|(node, c)| CauseCandidate {
                reason: c.reason,
                summary: format!("on node {node}: {}", c.summary),
                since: c.since,
            })
            .collect();
        status.identifiable = true;
        status.root_cause = Some(cause);
    }
    if succeeded == observed.len() {
        status.phase = Some(AbnormalPhase::Succeeded);
        status.reason.clear();
        status.message = format!("succeeded on all {} nodes", observed.len());
    } else {
        let failed: Vec<String> = observed
            .iter()
            .filter(|c| c.phase != "Succeeded")
            .map(|c| format!("{} ({}: {})", c.node, or(&c.reason, &c.phase), c.message))
            .collect();
        status.phase = Some(AbnormalPhase::Failed);
        status.reason = FAN_OUT_FAILED.into();
        status.message = format!(
            "{} of {} nodes did not succeed: {}; see each node's Abnormal (status.context.fanOut)",
            failed.len(),
            observed.len(),
            failed.join("; ")
        );
    }
    *status != before
}

fn or<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> Time {
        Time("2026-12-04T10:00:00Z".parse().unwrap())
    }

    fn parent() -> Abnormal {
        serde_json::from_value(
            json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "everywhere", "namespace": "ops", "uid": "u-1",
                         "annotations": {"kdiag.io/kube-diagnoser-version": "v0.1.5"}},
            "spec": {"assignedDiagnosers": [{"name": "d"}]}}),
        )
        .unwrap()
    }

    fn child_in(phase: &str, reason: &str, cause: Option<&str>) -> Abnormal {
        let mut a = parent();
        a.status = Some(AbnormalStatus {
            phase: Some(serde_json::from_value(json!(phase)).unwrap()),
            reason: reason.into(),
            message: format!("{reason} here"),
            root_cause: cause.map(|c| RootCause {
                summary: c.into(),
                reason: "R".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        a
    }

    #[test]
    fn a_child_is_the_parents_spec_on_one_node_owned_by_the_parent() {
        let p = parent();
        assert!(fans_out(&p));
        let c = child(&p, &p, "node-a");
        assert_eq!(c.metadata.name.as_deref(), Some("everywhere.node-a"));
        assert_eq!(c.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(c.spec.node_name, "node-a");
        assert!(!fans_out(&c));
        assert_eq!(c.spec.assigned_diagnosers, p.spec.assigned_diagnosers);
        assert_eq!(c.metadata.owner_references.unwrap()[0].uid, "u-1");
        assert_eq!(c.metadata.labels.unwrap()[FAN_OUT_PARENT_LABEL], "u-1");
        assert_eq!(
            c.metadata.annotations.unwrap()[KUBE_DIAGNOSER_VERSION_ANNOTATION],
            "v0.1.5"
        );
        let long = child_name(&"p".repeat(250), "node-a");
        assert!(long.len() <= 253, "{}", long.len());
    }

    #[test]
    fn the_parent_ends_only_when_every_node_has_and_names_the_nodes_that_failed() {
        let mut st = AbnormalStatus::default();
        let nodes = vec!["a".to_owned(), "b".to_owned()];
        accept(&mut st, "everywhere", &nodes, &now());
        assert_eq!(st.phase, Some(AbnormalPhase::InformationCollecting));
        let mut entries = children(&st);
        assert_eq!(entries.len(), 2);
        observe(
            &mut entries[0],
            Some(&child_in("Succeeded", "", Some("disk full"))),
        );
        observe(&mut entries[1], Some(&child_in("Diagnosing", "", None)));
        assert!(summarise(&mut st, entries.clone(), vec![]));
        assert_eq!(st.phase, Some(AbnormalPhase::InformationCollecting));
        assert!(st.message.contains("1 of 2 nodes done"), "{}", st.message);
        observe(&mut entries[1], None);
        let cause = RootCause {
            summary: "disk full".into(),
            reason: "R".into(),
            ..Default::default()
        };
        assert!(summarise(&mut st, entries, vec![("a".into(), cause)]));
        assert_eq!(st.phase, Some(AbnormalPhase::Failed));
        assert_eq!(st.reason, FAN_OUT_FAILED);
        assert!(
            st.message.contains("b (Deleted: deleted before it ended)"),
            "{}",
            st.message
        );
        assert_eq!(st.root_cause.unwrap().summary, "on node a: disk full");
    }

    #[test]
    fn the_parent_succeeds_when_every_node_does() {
        let mut st = AbnormalStatus::default();
        accept(&mut st, "p", &["a".to_owned()], &now());
        let mut entries = children(&st);
        observe(&mut entries[0], Some(&child_in("Succeeded", "", None)));
        summarise(&mut st, entries.clone(), vec![]);
        assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
        assert!(!summarise(&mut st, entries, vec![]), "nothing changed");
    }
}
