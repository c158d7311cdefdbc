//! The hub's pure decisions: what a member's results are stored as, what a `Cluster`'s status
//! says after a heartbeat, and when a silent cluster is offline. No IO, the time is passed in.
//!
//! Storage: every member's ProbeStatuses live in the hub's one fleet namespace, named
//! `<cluster>.<namespace>.<name>` and labelled [`CLUSTER_LABEL`]`=<cluster>`, so
//! `kubectl get probestatus -n kdiag-fleet -l kdiag.io/fleet-cluster=prod-1` is one cluster's
//! view and `kubectl get probestatus -n kdiag-fleet` every cluster's. One namespace needs no
//! right to create namespaces and keeps the hub's RBAC to a Role.

use std::time::Duration;

use jiff::Timestamp;
use kdiag_api::{ClusterStatus, DiagnosisSummary};
use serde_json::{Value, json};

use crate::protocol::{Facts, ProbeResult};

pub use crate::credential::CLUSTER_LABEL;

/// `status.state` while the member heartbeats.
pub const CONNECTED: &str = "Connected";
/// `status.state` once it stopped.
pub const OFFLINE: &str = "Offline";
/// On a stored ProbeStatus: its namespace/name in the member.
pub const SOURCE_ANNOTATION: &str = "kdiag.io/fleet-source";
/// The field manager of the hub's writes.
pub const FIELD_MANAGER: &str = "kdiag-hub";

/// Longest object name (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The name a member's ProbeStatus `namespace/name` is stored under in the hub. Names that
/// would be too long keep a prefix and a hash of the whole, so they stay unique.
pub fn stored_name(cluster: &str, namespace: &str, name: &str) -> String {
    let full = format!("{cluster}.{namespace}.{name}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = kdiag_api::labels::node_label_value(&full);
    let keep = MAX_NAME - hash.len() - 1;
    let mut prefix = full[..keep].to_owned();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    format!("{prefix}-{hash}")
}

/// The stored ProbeStatus (for a server-side apply): spec, labels and annotations. Its status
/// goes in a second apply to the status subresource ([`stored_status`]).
pub fn stored_object(
    hub_namespace: &str,
    cluster: &str,
    namespace: &str,
    name: &str,
    result: &ProbeResult,
) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        SOURCE_ANNOTATION.into(),
        json!(format!("{namespace}/{name}")),
    );
    for (k, v) in &result.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    json!({
        "apiVersion": "kubeprober.erda.cloud/v1",
        "kind": "ProbeStatus",
        "metadata": {
            "name": stored_name(cluster, namespace, name),
            "namespace": hub_namespace,
            "labels": {CLUSTER_LABEL: cluster, "app.kubernetes.io/managed-by": FIELD_MANAGER},
            "annotations": annotations,
        },
        "spec": result.spec,
    })
}

/// The stored ProbeStatus's status, for an apply to the status subresource.
pub fn stored_status(hub_namespace: &str, stored_name: &str, result: &ProbeResult) -> Value {
    json!({
        "apiVersion": "kubeprober.erda.cloud/v1",
        "kind": "ProbeStatus",
        "metadata": {"name": stored_name, "namespace": hub_namespace},
        "status": result.status.clone().unwrap_or_default(),
    })
}

/// The Cluster's status after a heartbeat with `facts`: connected (since now, unless it already
/// was), KubeProber's fields (heartBeatTimeStamp, nodeCount, checkers `total/error`) and kdiag's.
/// A merge patch of the status subresource.
pub fn connected(
    previous: Option<&ClusterStatus>,
    facts: &Facts,
    checkers: (u64, u64),
    now: Timestamp,
) -> Value {
    let since = match previous {
        Some(p) if p.state == CONNECTED && p.state_since.is_some() => {
            p.state_since.as_ref().map(|t| t.0.to_string())
        }
        _ => Some(now.to_string()),
    };
    let mut patch = json!({"status": {
        "heartBeatTimeStamp": now.to_string(),
        "nodeCount": facts.node_count,
        "checkers": format!("{}/{}", checkers.0, checkers.1),
        "state": CONNECTED,
        "stateSince": since,
        "lastHeartbeatTime": now.to_string(),
        "kdiagVersion": facts.kdiag_version,
        "droppedResults": facts.dropped_results,
    }});
    if let Some(abnormals) = &facts.abnormals {
        patch["status"]["abnormals"] = json!(abnormals);
    }
    // An offline reason is removed (null deletes a key in a merge patch); a null or an empty
    // string for a key the object lacks fails validation on the 1.20 apiserver.
    if previous.is_some_and(|p| !p.message.is_empty()) {
        patch["status"]["message"] = Value::Null;
    }
    patch
}

/// The Cluster's status after a heartbeat, or None when writing it would change nothing but the
/// heartbeat time and that was written less than `refresh` ago. So a quiet fleet costs one
/// write per cluster per `refresh`, not one per heartbeat; `refresh` must stay well below the
/// offline timeout, which reads the written time.
pub fn heartbeat_status(
    previous: Option<&ClusterStatus>,
    facts: &Facts,
    checkers: (u64, u64),
    now: Timestamp,
    refresh: Duration,
) -> Option<Value> {
    let patch = connected(previous, facts, checkers, now);
    let Some(p) = previous else {
        return Some(patch);
    };
    let next = status_of(&patch);
    let same = p.state == next.state
        && p.message.is_empty()
        && p.node_count == next.node_count
        && p.checkers == next.checkers
        && p.kdiag_version == next.kdiag_version
        && p.dropped_results == next.dropped_results
        && (facts.abnormals.is_none() || p.abnormals == next.abnormals);
    let fresh = p
        .last_heartbeat_time
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).as_secs_f64() < refresh.as_secs_f64());
    (!same || !fresh).then_some(patch)
}

/// The latest diagnoses a Cluster's status shows.
pub const DIAGNOSES_KEPT: usize = 5;

/// `status.diagnoses` after the member's Abnormal `namespace/name` changed to `summary` (None:
/// deleted), or None when the list stays as it is. Open Abnormals come first, newest first, then
/// the most recently finished; only [`DIAGNOSES_KEPT`] are kept.
pub fn diagnoses_with(
    list: &[DiagnosisSummary],
    namespace: &str,
    name: &str,
    summary: Option<&DiagnosisSummary>,
) -> Option<Vec<DiagnosisSummary>> {
    let mut out: Vec<DiagnosisSummary> = list
        .iter()
        .filter(|d| !(d.namespace == namespace && d.name == name))
        .cloned()
        .collect();
    out.extend(summary.cloned());
    out.sort_by(|a, b| {
        let time =
            |d: &DiagnosisSummary| d.finish_time.clone().or(d.create_time.clone()).map(|t| t.0);
        b.is_open()
            .cmp(&a.is_open())
            .then_with(|| time(b).cmp(&time(a)))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    out.truncate(DIAGNOSES_KEPT);
    (out != list).then_some(out)
}

/// `status.diagnoses` without the Abnormals the member no longer has (`namespace/name` in
/// `present`), or None when all are there.
pub fn diagnoses_present(
    list: &[DiagnosisSummary],
    present: &std::collections::BTreeSet<String>,
) -> Option<Vec<DiagnosisSummary>> {
    let out: Vec<DiagnosisSummary> = list
        .iter()
        .filter(|d| present.contains(&format!("{}/{}", d.namespace, d.name)))
        .cloned()
        .collect();
    (out.len() != list.len()).then_some(out)
}

/// A merge patch writing `status.diagnoses` (an empty list deletes the key: see
/// [`attached_probes`]).
pub fn diagnoses_patch(list: &[DiagnosisSummary]) -> Value {
    let value = if list.is_empty() {
        Value::Null
    } else {
        json!(list)
    };
    json!({"status": {"diagnoses": value}})
}

/// The status a merge patch from [`connected`] or [`offline`] leaves (without its deletions).
pub fn status_of(patch: &Value) -> ClusterStatus {
    let mut status = patch["status"].clone();
    if let Some(map) = status.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    serde_json::from_value(status).unwrap_or_default()
}

/// The Cluster's status once it is offline for `why`, or None when it already says so.
pub fn offline(previous: Option<&ClusterStatus>, why: &str, now: Timestamp) -> Option<Value> {
    if previous.is_some_and(|p| p.state == OFFLINE && p.message == why) {
        return None;
    }
    let since = match previous {
        Some(p) if p.state == OFFLINE => p.state_since.as_ref().map(|t| t.0),
        _ => None,
    }
    .unwrap_or(now);
    Some(json!({"status": {
        "state": OFFLINE,
        "stateSince": since.to_string(),
        "message": why,
    }}))
}

/// Whether a cluster shown connected has missed its heartbeats for longer than `timeout`.
pub fn missed_heartbeats(status: &ClusterStatus, now: Timestamp, timeout: Duration) -> bool {
    if status.state != CONNECTED {
        return false;
    }
    let Some(last) = &status.last_heartbeat_time else {
        return true;
    };
    let silent = now.duration_since(last.0);
    silent.as_secs_f64() > timeout.as_secs_f64()
}

/// The message of a cluster offline for missed heartbeats.
pub fn missed_heartbeats_message(timeout: Duration) -> String {
    format!(
        "no heartbeat for more than {}s: the member's link is down",
        timeout.as_secs()
    )
}

/// The label prefix that assigns a Probe to a Cluster: `probe/<probe name>=true` (KubeProber's).
pub const PROBE_LABEL_PREFIX: &str = "probe/";

/// The Probes of the fleet namespace assigned to a Cluster with `labels`, by name.
pub fn assigned_probes(
    labels: &std::collections::BTreeMap<String, String>,
    probes: &[kdiag_api::Probe],
) -> Vec<crate::protocol::AssignedProbe> {
    let mut out: Vec<_> = probes
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let label = labels.get(&format!("{PROBE_LABEL_PREFIX}{name}"))?;
            label
                .trim()
                .eq_ignore_ascii_case("true")
                .then(|| crate::protocol::AssignedProbe {
                    name,
                    spec: p.spec.clone(),
                })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// KubeProber's `status.attachedProbes` for the assigned `names`, as a merge patch, or None when
/// it already says so. An empty list deletes the key (an empty value for a key the object lacks
/// fails validation on the 1.20 apiserver).
pub fn attached_probes(previous: Option<&ClusterStatus>, names: &[String]) -> Option<Value> {
    let current = previous
        .map(|p| p.attached_probes.as_slice())
        .unwrap_or_default();
    if current == names {
        return None;
    }
    let value = if names.is_empty() {
        Value::Null
    } else {
        json!(names)
    };
    Some(json!({"status": {"attachedProbes": value}}))
}

/// On a Cluster: the latest one-time run asked for (`kubectl diag probe once -c`), as JSON
/// [`OnceRequest`]. The hub sends it down once and records it in `status.onceProbeList`.
pub const PROBE_ONCE_ANNOTATION: &str = "kdiag.io/probe-once";
/// One-time runs kept in `status.onceProbeList` (KubeProber kept the last 5).
pub const ONCE_HISTORY: usize = 5;

/// A one-time run asked for.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OnceRequest {
    pub id: String,
    /// Probe names; empty: every Probe assigned to the cluster.
    #[serde(default)]
    pub probes: Vec<String>,
    #[serde(default)]
    pub create_time: String,
}

/// The request on a Cluster's annotations, if any readable one.
pub fn once_request(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<OnceRequest> {
    let raw = annotations?.get(PROBE_ONCE_ANNOTATION)?;
    serde_json::from_str::<OnceRequest>(raw)
        .ok()
        .filter(|r| !r.id.is_empty())
}

/// `status.onceProbeList` with `request` added (the last [`ONCE_HISTORY`] kept), or None when it
/// is already there.
pub fn once_list_with(
    list: &[kdiag_api::OnceProbeItem],
    request: &OnceRequest,
) -> Option<Vec<kdiag_api::OnceProbeItem>> {
    if list.iter().any(|i| i.id == request.id) {
        return None;
    }
    let mut out = list.to_vec();
    out.push(kdiag_api::OnceProbeItem {
        id: request.id.clone(),
        create_time: request.create_time.clone(),
        finish_time: String::new(),
        probes: request.probes.clone(),
        results: Vec::new(),
    });
    let skip = out.len().saturating_sub(ONCE_HISTORY);
    Some(out.split_off(skip))
}

/// Of the results stored for a cluster (stored name, and the member's `namespace/name` from
/// [`SOURCE_ANNOTATION`]), those whose source the member no longer has. A stored result without
/// a source is left alone: it cannot be matched.
pub fn stale_results<'a>(
    stored: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    present: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    stored
        .into_iter()
        .filter_map(|(name, source)| {
            let source = source?;
            (!present.contains(source)).then(|| name.to_owned())
        })
        .collect()
}

/// `status.onceProbeList` with the run `id` marked finished at `finish_time` (and, when it was
/// asked for every assigned Probe, the Probes it ran) and its `results`, or None when the run is
/// not in the list or already says so. A finished run keeps its `finishTime`; its results are
/// replaced when they changed (a root cause kdiag wrote back after the run ended).
pub fn once_list_finished(
    list: &[kdiag_api::OnceProbeItem],
    id: &str,
    finish_time: &str,
    probes: &[String],
    results: &[kdiag_api::OnceProbeResult],
) -> Option<Vec<kdiag_api::OnceProbeItem>> {
    let i = list.iter().position(|i| i.id == id)?;
    let mut out = list.to_vec();
    let item = &mut out[i];
    if item.finish_time.is_empty() {
        item.finish_time = finish_time.to_owned();
    }
    if item.probes.is_empty() {
        item.probes = probes.to_vec();
    }
    if !results.is_empty() {
        item.results = results.to_vec();
    }
    (out[i] != list[i]).then_some(out)
}

/// What each ProbeRun of a one-time run found, by Probe name: its phase, message and checkers
/// (with the diagnoses kdiag wrote into the run).
pub fn once_results(runs: &[kdiag_api::ProbeRun]) -> Vec<kdiag_api::OnceProbeResult> {
    let mut out: Vec<kdiag_api::OnceProbeResult> = runs
        .iter()
        .map(|r| {
            let status = r.status.clone().unwrap_or_default();
            kdiag_api::OnceProbeResult {
                probe: r.spec.probe.clone(),
                phase: status.phase.as_str().to_owned(),
                message: status.message,
                checkers: status
                    .checkers
                    .into_iter()
                    .map(|c| kdiag_api::ProbeCheckerStatus {
                        name: c.name,
                        status: c.status,
                        message: c.message,
                        last_run: c.last_run,
                        diagnosis: c.diagnosis,
                        window: None,
                    })
                    .collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.probe.cmp(&b.probe));
    out
}

/// Whether every ProbeRun of a one-time run ended, and when the last did (RFC 3339): None while
/// one is pending or running (or there are none yet).
pub fn once_finished(runs: &[kdiag_api::ProbeRun]) -> Option<String> {
    use kdiag_api::ProbeRunPhase::{Failed, Finished};
    if runs.is_empty() {
        return None;
    }
    let mut last: Option<Timestamp> = None;
    for r in runs {
        let status = r.status.as_ref()?;
        if !matches!(status.phase, Finished | Failed) {
            return None;
        }
        if let Some(t) = &status.finished_at {
            last = last.max(Some(t.0));
        }
    }
    Some(last.unwrap_or_else(Timestamp::now).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn facts() -> Facts {
        Facts {
            protocol: 1,
            kdiag_version: "0.1.0".into(),
            kubernetes_version: "v1.20.2".into(),
            node_count: 3,
            dropped_results: 0,
            abnormals: Some(kdiag_api::AbnormalCounts {
                open: 1,
                failed: 0,
                succeeded: 2,
            }),
        }
    }

    fn status(v: &Value) -> ClusterStatus {
        status_of(v)
    }

    #[test]
    fn a_probe_is_assigned_by_the_label_probe_slash_its_name_equal_true() {
        let probe = |name: &str| kdiag_api::Probe::new(name, Default::default());
        let probes = [probe("k8s"), probe("host"), probe("dns")];
        let labels = [
            ("probe/k8s".to_string(), "true".to_string()),
            ("probe/host".to_string(), "false".to_string()),
            ("probe/gone".to_string(), "true".to_string()),
            ("team".to_string(), "sre".to_string()),
        ]
        .into();
        let names: Vec<String> = assigned_probes(&labels, &probes)
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["k8s"]);
    }

    #[test]
    fn a_one_time_run_is_recorded_once_and_only_the_last_five_are_kept() {
        let request = |id: &str| OnceRequest {
            id: id.into(),
            probes: vec!["k8s".into()],
            create_time: "2026-12-04T10:00:00Z".into(),
        };
        let one = once_list_with(&[], &request("a")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(once_list_with(&one, &request("a")), None);
        let mut list = one;
        for id in ["b", "c", "d", "e", "f"] {
            list = once_list_with(&list, &request(id)).unwrap();
        }
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d", "e", "f"]);
        let annotations = [(
            PROBE_ONCE_ANNOTATION.to_string(),
            r#"{"id": "x1", "probes": []}"#.to_string(),
        )]
        .into();
        assert_eq!(once_request(Some(&annotations)).unwrap().id, "x1");
        assert_eq!(once_request(None), None);
    }

    #[test]
    fn attached_probes_are_written_when_they_change_and_deleted_when_none_are_left() {
        let names = vec!["dns".to_string(), "k8s".to_string()];
        let patch = attached_probes(None, &names).unwrap();
        assert_eq!(patch["status"]["attachedProbes"], json!(["dns", "k8s"]));
        let s = ClusterStatus {
            attached_probes: names.clone(),
            ..Default::default()
        };
        assert_eq!(attached_probes(Some(&s), &names), None);
        assert!(attached_probes(Some(&s), &[]).unwrap()["status"]["attachedProbes"].is_null());
        assert_eq!(attached_probes(None, &[]), None);
    }

    #[test]
    fn stored_names_keep_cluster_namespace_and_name_and_stay_valid_when_long() {
        assert_eq!(
            stored_name("prod-1", "kubeprober", "k8s"),
            "prod-1.kubeprober.k8s"
        );
        let long = "n".repeat(253);
        let a = stored_name("prod-1", "kubeprober", &long);
        let b = stored_name("prod-1", "kubeprober", &format!("{long}x"));
        assert!(a.len() <= 253 && b.len() <= 253);
        assert_ne!(a, b);
        assert!(a.starts_with("prod-1.kubeprober.nnn"));
    }

    #[test]
    fn a_first_heartbeat_connects_the_cluster_since_now_and_later_ones_keep_the_since() {
        let now = t("2026-12-04T10:00:00Z");
        let first = connected(None, &facts(), (4, 1), now);
        let s = status(&first);
        assert_eq!(s.state, CONNECTED);
        assert_eq!(s.state_since, Some(Time(now)));
        assert_eq!(s.checkers, "4/1");
        assert_eq!(s.node_count, Some(3));
        assert_eq!(s.heart_beat_time_stamp, "2026-12-04T10:00:00Z");
        let later = connected(Some(&s), &facts(), (4, 0), t("2026-12-04T10:00:30Z"));
        let s2 = status(&later);
        assert_eq!(s2.state_since, Some(Time(now)));
        assert_eq!(
            s2.last_heartbeat_time,
            Some(Time(t("2026-12-04T10:00:30Z")))
        );
    }

    #[test]
    fn a_cluster_that_was_offline_reconnects_since_now() {
        let off = ClusterStatus {
            state: OFFLINE.into(),
            state_since: Some(Time(t("2026-12-04T09:00:00Z"))),
            message: "no heartbeat".into(),
            ..Default::default()
        };
        let now = t("2026-12-04T10:00:00Z");
        let patch = connected(Some(&off), &facts(), (0, 0), now);
        assert_eq!(status(&patch).state_since, Some(Time(now)));
        // The offline reason goes; a first heartbeat sends no message at all.
        assert!(patch["status"]["message"].is_null() && patch["status"].get("message").is_some());
        let first = connected(None, &facts(), (0, 0), now);
        assert!(first["status"].get("message").is_none());
    }

    #[test]
    fn a_cluster_is_offline_only_after_its_heartbeats_stop_for_the_timeout() {
        let s = ClusterStatus {
            state: CONNECTED.into(),
            last_heartbeat_time: Some(Time(t("2026-12-04T10:00:00Z"))),
            ..Default::default()
        };
        let timeout = Duration::from_secs(90);
        assert!(!missed_heartbeats(&s, t("2026-12-04T10:01:29Z"), timeout));
        assert!(missed_heartbeats(&s, t("2026-12-04T10:01:31Z"), timeout));
        let off = ClusterStatus {
            state: OFFLINE.into(),
            ..s
        };
        assert!(!missed_heartbeats(&off, t("2026-12-04T11:00:00Z"), timeout));
    }

    #[test]
    fn going_offline_is_written_once_and_keeps_its_since() {
        let now = t("2026-12-04T10:00:00Z");
        let patch = offline(None, "gone", now).unwrap();
        let s = status(&patch);
        assert_eq!((s.state.as_str(), s.message.as_str()), (OFFLINE, "gone"));
        assert_eq!(offline(Some(&s), "gone", now), None);
        let revoked = status(&offline(Some(&s), "revoked", t("2026-12-04T11:00:00Z")).unwrap());
        assert_eq!(revoked.state_since, Some(Time(now)));
    }

    #[test]
    fn a_stored_result_names_its_cluster_and_source_and_keeps_root_causes() {
        let result = ProbeResult {
            annotations: [("kdiag.io/diagnoses".to_string(), "{}".to_string())].into(),
            ..Default::default()
        };
        let o = stored_object("kdiag-fleet", "prod-1", "kubeprober", "k8s", &result);
        assert_eq!(o["metadata"]["name"], "prod-1.kubeprober.k8s");
        assert_eq!(o["metadata"]["labels"][CLUSTER_LABEL], "prod-1");
        assert_eq!(
            o["metadata"]["annotations"][SOURCE_ANNOTATION],
            "kubeprober/k8s"
        );
        assert_eq!(o["metadata"]["annotations"]["kdiag.io/diagnoses"], "{}");
    }

    #[test]
    fn a_one_time_run_is_finished_once_with_the_probes_it_ran() {
        let item = |id: &str, probes: &[&str]| kdiag_api::OnceProbeItem {
            id: id.into(),
            create_time: "2026-12-04T10:00:00Z".into(),
            finish_time: String::new(),
            probes: probes.iter().map(|p| p.to_string()).collect(),
            results: Vec::new(),
        };
        let list = [item("a", &["dns"]), item("b", &[])];
        let ran = ["dns".to_string(), "k8s".to_string()];
        let done = once_list_finished(&list, "b", "2026-12-04T10:01:00Z", &ran, &[]).unwrap();
        assert_eq!(done[1].finish_time, "2026-12-04T10:01:00Z");
        assert_eq!(done[1].probes, ran, "asked for all: the Probes it ran");
        let done = once_list_finished(&done, "a", "2026-12-04T10:02:00Z", &ran, &[]).unwrap();
        assert_eq!(done[0].probes, ["dns"], "asked for some: kept as asked");
        assert_eq!(
            once_list_finished(&done, "a", "2026-12-04T10:03:00Z", &ran, &[]),
            None
        );
        assert_eq!(once_list_finished(&done, "gone", "x", &ran, &[]), None);
        // The run's results, and a root cause that came after it ended, replace what it said;
        // its finishTime stays.
        let result = |root_cause: &str| kdiag_api::OnceProbeResult {
            probe: "dns".into(),
            phase: "Finished".into(),
            checkers: vec![kdiag_api::ProbeCheckerStatus {
                name: "resolves".into(),
                status: kdiag_api::CheckerStatus::Error,
                diagnosis: Some(kdiag_api::CheckerDiagnosis {
                    root_cause: root_cause.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let with =
            once_list_finished(&done, "a", "2026-12-04T10:03:00Z", &ran, &[result("")]).unwrap();
        assert_eq!(with[0].finish_time, "2026-12-04T10:02:00Z");
        let later = [result("coredns is down")];
        let with = once_list_finished(&with, "a", "x", &ran, &later).unwrap();
        assert_eq!(with[0].results, later);
        assert_eq!(once_list_finished(&with, "a", "x", &ran, &later), None);
    }

    #[test]
    fn a_one_time_run_is_finished_when_every_probe_run_ended() {
        let run = |phase: &str, at: Option<&str>| -> kdiag_api::ProbeRun {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "diagnosis.netease.com/v1", "kind": "ProbeRun", "metadata": {"name": "r"},
                "spec": {"probe": "dns", "trigger": "Manual"},
                "status": {"phase": phase, "finishedAt": at}
            }))
            .unwrap()
        };
        assert_eq!(once_finished(&[]), None);
        let finished = run("Finished", Some("2026-12-04T10:01:00Z"));
        let failed = run("Failed", Some("2026-12-04T10:02:00Z"));
        assert_eq!(
            once_finished(&[finished.clone(), failed.clone()]).as_deref(),
            Some("2026-12-04T10:02:00Z")
        );
        assert_eq!(once_finished(&[finished, run("Running", None)]), None);
    }

    #[test]
    fn a_stored_result_whose_source_the_member_no_longer_has_is_stale() {
        let present = ["kubeprober/dns".to_string(), "team/k8s".to_string()].into();
        let stored = [
            ("c.kubeprober.dns", Some("kubeprober/dns")),
            ("c.kubeprober.gone", Some("kubeprober/gone")),
            ("c.team.k8s", Some("team/k8s")),
            ("c.unmatched", None),
        ];
        assert_eq!(stale_results(stored, &present), ["c.kubeprober.gone"]);
        assert_eq!(
            stale_results(stored, &Default::default()),
            ["c.kubeprober.dns", "c.kubeprober.gone", "c.team.k8s"]
        );
    }

    fn diagnosis(
        name: &str,
        phase: &str,
        created: &str,
        finished: Option<&str>,
    ) -> DiagnosisSummary {
        DiagnosisSummary {
            namespace: "ns".into(),
            name: name.into(),
            phase: phase.into(),
            root_cause: format!("cause of {name}"),
            create_time: Some(Time(t(created))),
            finish_time: finished.map(|f| Time(t(f))),
            ..Default::default()
        }
    }

    fn names(list: &[DiagnosisSummary]) -> Vec<&str> {
        list.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn the_cluster_shows_open_diagnoses_first_then_the_latest_finished_and_only_a_few() {
        let mut list = Vec::new();
        for (i, phase) in [
            "Succeeded",
            "Failed",
            "Succeeded",
            "Succeeded",
            "Succeeded",
            "Succeeded",
        ]
        .iter()
        .enumerate()
        {
            let at = format!("2026-12-04T10:0{i}:00Z");
            let d = diagnosis(&format!("done-{i}"), phase, &at, Some(&at));
            list = diagnoses_with(&list, "ns", &d.name, Some(&d)).unwrap_or(list);
        }
        assert_eq!(
            names(&list),
            ["done-5", "done-4", "done-3", "done-2", "done-1"]
        );
        // An old, finished one ranks below all kept: nothing to write.
        let old = diagnosis(
            "old",
            "Succeeded",
            "2026-12-04T09:00:00Z",
            Some("2026-12-04T09:00:00Z"),
        );
        assert_eq!(diagnoses_with(&list, "ns", "old", Some(&old)), None);
        // An open one comes first, even when older.
        let open = diagnosis("open", "Diagnosing", "2026-12-04T09:30:00Z", None);
        let list = diagnoses_with(&list, "ns", "open", Some(&open)).unwrap();
        assert_eq!(
            names(&list),
            ["open", "done-5", "done-4", "done-3", "done-2"]
        );
        // It finishes: it moves to its place among the finished, with its root cause.
        let done = diagnosis(
            "open",
            "Succeeded",
            "2026-12-04T09:30:00Z",
            Some("2026-12-04T10:09:00Z"),
        );
        let list = diagnoses_with(&list, "ns", "open", Some(&done)).unwrap();
        assert_eq!(list[0].phase, "Succeeded");
        assert_eq!(list[0].root_cause, "cause of open");
        // Deleted in the member: gone; the same state again: nothing to write.
        let list = diagnoses_with(&list, "ns", "open", None).unwrap();
        assert_eq!(names(&list), ["done-5", "done-4", "done-3", "done-2"]);
        assert_eq!(diagnoses_with(&list, "ns", "open", None), None);
        let present = ["ns/done-5".to_string(), "ns/done-2".to_string()].into();
        assert_eq!(
            names(&diagnoses_present(&list, &present).unwrap()),
            ["done-5", "done-2"]
        );
        assert!(diagnoses_patch(&[])["status"]["diagnoses"].is_null());
    }

    #[test]
    fn a_heartbeat_that_changes_nothing_is_written_only_once_the_refresh_interval_passed() {
        let refresh = Duration::from_secs(30);
        let first = t("2026-12-04T10:00:00Z");
        let written = status(&heartbeat_status(None, &facts(), (4, 1), first, refresh).unwrap());
        assert_eq!(written.abnormals.unwrap().succeeded, 2);
        let soon = t("2026-12-04T10:00:10Z");
        assert_eq!(
            heartbeat_status(Some(&written), &facts(), (4, 1), soon, refresh),
            None
        );
        // A change is written at once: checkers, node count, Abnormals.
        assert!(heartbeat_status(Some(&written), &facts(), (4, 2), soon, refresh).is_some());
        let more_nodes = Facts {
            node_count: 4,
            ..facts()
        };
        assert!(heartbeat_status(Some(&written), &more_nodes, (4, 1), soon, refresh).is_some());
        let more_abnormals = Facts {
            abnormals: Some(kdiag_api::AbnormalCounts {
                open: 2,
                ..Default::default()
            }),
            ..facts()
        };
        assert!(heartbeat_status(Some(&written), &more_abnormals, (4, 1), soon, refresh).is_some());
        // Nothing changed, but the written heartbeat is getting old.
        let later = t("2026-12-04T10:00:31Z");
        assert!(heartbeat_status(Some(&written), &facts(), (4, 1), later, refresh).is_some());
        // An offline cluster that heartbeats again is written at once.
        let off = ClusterStatus {
            state: OFFLINE.into(),
            message: "gone".into(),
            ..written
        };
        assert!(heartbeat_status(Some(&off), &facts(), (4, 1), soon, refresh).is_some());
    }
}
