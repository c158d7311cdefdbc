//! What travels over the member link: JSON text frames, one message each. The member speaks
//! first (a heartbeat); every result carries a sequence number the hub acknowledges once the
//! result is stored, so a result is sent again after a reconnect until it is acknowledged
//! (at least once; the hub's writes are idempotent).
//!
//! Authentication is not part of the frames: the member sends its cluster name and credential
//! as headers of the WebSocket upgrade request, and the hub answers 401/403 before any frame.

use std::collections::BTreeMap;

use kdiag_api::{
    Abnormal, AbnormalCounts, DiagnosisSummary, OnceProbeResult, ProbeStatusSpec, ProbeStatusStates,
};
use serde::{Deserialize, Serialize};

/// The path the hub serves the link on.
pub const PATH: &str = "/fleet/v1/connect";
/// The upgrade request's header naming the member's cluster.
pub const CLUSTER_HEADER: &str = "kdiag-cluster";
/// Bumped on a change an older peer would misread.
pub const VERSION: u32 = 1;

/// What a member sends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum MemberMessage {
    /// The cluster's facts, first on every connection and then every heartbeat interval.
    #[serde(rename_all = "camelCase")]
    Heartbeat(Facts),
    /// A ProbeStatus of the member changed (or, with `object` None, was deleted).
    #[serde(rename_all = "camelCase")]
    ProbeStatus {
        seq: u64,
        namespace: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<ProbeResult>,
    },
    /// An Abnormal of the member changed (or, with `object` None, was deleted): its summary.
    /// Queued, sequenced and acknowledged like a ProbeStatus.
    #[serde(rename_all = "camelCase")]
    Abnormal {
        seq: u64,
        namespace: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<DiagnosisSummary>,
    },
    /// Every ProbeStatus the member has now, as `namespace/name`: the hub deletes the results
    /// it stores for the cluster that are not among them (deleted while the member's controller
    /// was not running, so no deletion was ever queued). Sent once per link, after the results
    /// queued before it.
    #[serde(rename_all = "camelCase")]
    Inventory { probe_statuses: Vec<String> },
    /// Every Abnormal the member has now, as `namespace/name`: the hub drops the diagnoses it
    /// shows that are not among them. Sent once per link, like [`MemberMessage::Inventory`].
    #[serde(rename_all = "camelCase")]
    AbnormalInventory { abnormals: Vec<String> },
    /// Every ProbeRun of the one-time run `id` ended (finished or could not run); `probes` are
    /// those it ran. Sent once per run (again after a member restart: the hub ignores a run it
    /// already recorded as finished).
    #[serde(rename_all = "camelCase")]
    OnceFinished {
        id: String,
        probes: Vec<String>,
        /// RFC 3339: when its last ProbeRun ended.
        finish_time: String,
        /// What each of its ProbeRuns found. Sent again when it changes (a root cause kdiag
        /// wrote back after the run ended).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        results: Vec<OnceProbeResult>,
    },
}

/// What the hub sends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum HubMessage {
    /// The result with this sequence number is stored: the member may forget it.
    Ack { seq: u64 },
    /// A heartbeat arrived: the hub is alive (the member reconnects after hearing nothing).
    HeartbeatAck,
    /// Every Probe assigned to the cluster now (by the label `probe/<name>=true` on its
    /// Cluster): the member creates or updates them and removes those it got before and no
    /// longer gets. Sent on each link and whenever the assignment changes.
    Probes { probes: Vec<AssignedProbe> },
    /// Run these assigned Probes once now (all of them when empty): `kubectl diag probe once -c`.
    RunOnce { id: String, probes: Vec<String> },
}

/// A Probe the hub assigns: its name and spec (the member decides the namespace).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssignedProbe {
    pub name: String,
    pub spec: kdiag_api::ProbeSpec,
}

/// The cluster's facts a heartbeat carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    pub protocol: u32,
    pub kdiag_version: String,
    pub kubernetes_version: String,
    pub node_count: i64,
    /// Results the member dropped so far because its queue was full.
    pub dropped_results: u64,
    /// The member's Abnormals by outcome (absent from members that do not count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abnormals: Option<AbnormalCounts>,
}

/// A ProbeStatus as it travels: its spec (checkers, with kdiag's diagnosis), its summary, and
/// the annotations kdiag writes root causes into when the CRD prunes the diagnosis field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeResult {
    pub spec: ProbeStatusSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ProbeStatusStates>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ProbeResult {
    /// What of `p` goes up: only the annotations that carry diagnoses.
    pub fn of(p: &kdiag_api::ProbeStatus) -> Self {
        let annotations = p
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| is_diagnosis_annotation(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self {
            spec: p.spec.clone(),
            status: p.status.clone(),
            annotations,
        }
    }

    /// (checkers, checkers in ERROR), for the Cluster's `total/error`.
    pub fn counts(&self) -> (u64, u64) {
        let total = self.spec.checkers.len() as u64;
        let errors = self
            .spec
            .checkers
            .iter()
            .filter(|c| c.status == kdiag_api::CheckerStatus::Error)
            .count() as u64;
        (total, errors)
    }
}

/// What of an Abnormal goes up: who and where, how far it got, and its root cause. Its finish
/// time is the latest condition change once it is Succeeded or Failed.
pub fn summary_of(a: &Abnormal) -> DiagnosisSummary {
    let status = a.status.as_ref();
    let phase = a.phase().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let root = status.and_then(|s| s.root_cause.as_ref());
    let finished = a.phase().is_some_and(|p| p.is_final());
    let finish_time = status.filter(|_| finished).and_then(|s| {
        s.conditions
            .iter()
            .filter_map(|c| c.last_transition_time.clone())
            .max_by_key(|t| t.0)
    });
    DiagnosisSummary {
        namespace: a.metadata.namespace.clone().unwrap_or_default(),
        name: a.metadata.name.clone().unwrap_or_default(),
        node: a.spec.node_name.clone(),
        phase,
        reason: status.map(|s| s.reason.clone()).unwrap_or_default(),
        root_cause: root.map(|r| r.summary.clone()).unwrap_or_default(),
        root_cause_reason: root.map(|r| r.reason.clone()).unwrap_or_default(),
        create_time: a.metadata.creation_timestamp.clone(),
        finish_time,
    }
}

/// Abnormals counted by outcome, from their phases.
pub fn count_abnormals<'a>(phases: impl IntoIterator<Item = &'a str>) -> AbnormalCounts {
    let mut c = AbnormalCounts::default();
    for phase in phases {
        match phase {
            "Succeeded" => c.succeeded += 1,
            "Failed" => c.failed += 1,
            _ => c.open += 1,
        }
    }
    c
}

/// The annotations kdiag keeps root causes in (`kdiag_api::labels`).
pub fn is_diagnosis_annotation(key: &str) -> bool {
    key == kdiag_api::labels::DIAGNOSES_ANNOTATION
        || key.starts_with(kdiag_api::labels::DIAGNOSIS_ANNOTATION_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_are_tagged_json_with_camel_case_fields() {
        let hb = MemberMessage::Heartbeat(Facts {
            protocol: VERSION,
            kdiag_version: "0.1.0".into(),
            kubernetes_version: "v1.20.2".into(),
            node_count: 3,
            dropped_results: 0,
            abnormals: None,
        });
        assert_eq!(
            serde_json::to_value(&hb).unwrap(),
            json!({"type": "heartbeat", "protocol": 1, "kdiagVersion": "0.1.0",
                   "kubernetesVersion": "v1.20.2", "nodeCount": 3, "droppedResults": 0})
        );
        assert_eq!(
            serde_json::to_value(HubMessage::Ack { seq: 7 }).unwrap(),
            json!({"type": "ack", "seq": 7})
        );
        let deleted: MemberMessage = serde_json::from_value(
            json!({"type": "probeStatus", "seq": 2, "namespace": "ns", "name": "p"}),
        )
        .unwrap();
        assert_eq!(
            deleted,
            MemberMessage::ProbeStatus {
                seq: 2,
                namespace: "ns".into(),
                name: "p".into(),
                object: None
            }
        );
    }

    #[test]
    fn only_diagnosis_annotations_go_up() {
        let p: kdiag_api::ProbeStatus = serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "k8s", "namespace": "kubeprober", "annotations": {
                "kdiag.io/diagnoses": "{}", "kdiag.io/diagnosis.dns": "resolv.conf is empty",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"checkers": [
                {"name": "dns", "status": "ERROR", "message": "no answer"},
                {"name": "nodes", "status": "PASS"}]}
        }))
        .unwrap();
        let r = ProbeResult::of(&p);
        assert_eq!(
            r.annotations.keys().collect::<Vec<_>>(),
            ["kdiag.io/diagnoses", "kdiag.io/diagnosis.dns"]
        );
        assert_eq!(r.counts(), (2, 1));
    }
}
