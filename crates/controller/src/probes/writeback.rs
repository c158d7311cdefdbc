//! The root cause next to the probe result: when an Abnormal a checker's failure created changes
//! phase, its diagnosis is written onto that checker's entry in the ProbeStatus.
//!
//! Where it goes depends on the installed ProbeStatus CRD. kdiag's CRD has
//! `spec.checkers[].diagnosis {abnormal, phase, rootCause}`. KubeProber's own CRD would prune that
//! field, so there kdiag writes the annotation `kdiag.io/diagnoses` instead: a JSON object from
//! checker name to the same three fields.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kdiag_api::kubeprober::NO_CAUSE_FOUND;
use kdiag_api::labels::DIAGNOSES_ANNOTATION;
use kdiag_api::{Abnormal, AbnormalPhase, CheckerDiagnosis, ProbeStatus, RootCause};
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::episodes::{EPISODES_ANNOTATION, Episodes};
use crate::Error;

/// Writes lost to a concurrent writer of the ProbeStatus (probe reports write it often) before
/// the write-back gives up and is requeued.
const CONFLICT_ATTEMPTS: usize = 3;

/// What the write-back controller shares.
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) abnormals: Store<DeserializeGuard<Abnormal>>,
    pub(crate) schema: SchemaProbe,
    pub(crate) metrics: Arc<Metrics>,
}

/// True for the Abnormals the write-back looks at: created for a probe's failure, and admitted.
pub(crate) fn concerns(obj: &DeserializeGuard<Abnormal>) -> bool {
    obj.0
        .as_ref()
        .is_ok_and(|a| a.spec.probe_status.is_some() && a.phase().is_some())
}

/// Brings the diagnosis next to the probe result up to date whenever an Abnormal a checker's
/// failure created changes. Its own controller, beside admission's: a ProbeStatus that cannot be
/// written (RBAC, a CRD that refuses the write) never holds up routing.
pub(crate) async fn reconcile(
    obj: Arc<DeserializeGuard<Abnormal>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    if let Ok(abnormal) = &obj.0
        && concerns(&obj)
    {
        sync(&ctx.client, &ctx.abnormals, &ctx.schema, abnormal)
            .await
            .inspect_err(|e| {
                if let Error::Kube { operation, .. } = e {
                    ctx.metrics
                        .controller
                        .api_errors
                        .with_label_values(&[operation])
                        .inc();
                }
            })?;
    }
    Ok(Action::await_change())
}

/// A lost race or an unavailable apiserver is retried in 5 s, so the final phase reaches the
/// ProbeStatus; a refusal (RBAC, a CRD that rejects the write) every minute, and said louder.
pub(crate) fn error_policy(
    _obj: Arc<DeserializeGuard<Abnormal>>,
    error: &Error,
    ctx: Arc<Ctx>,
) -> Action {
    ctx.metrics
        .controller
        .error("writeback", error.metric_label(), error.category());
    if error.is_transient() {
        tracing::warn!(error = %error, "writing a diagnosis to its ProbeStatus; retrying in 5s");
        Action::requeue(Duration::from_secs(5))
    } else {
        tracing::error!(error = %error, "writing a diagnosis to its ProbeStatus; retrying in 60s");
        Action::requeue(Duration::from_secs(60))
    }
}
use crate::retry;

/// Whether the installed CRD keeps `spec.checkers[].diagnosis`, looked up now and then.
#[derive(Default)]
pub struct SchemaProbe(Mutex<Option<(bool, Instant)>>);

impl SchemaProbe {
    pub async fn keeps_diagnosis_field(&self, client: &Client) -> bool {
        if let Some((keeps, at)) = *self.0.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < Duration::from_secs(300)
        {
            return keeps;
        }
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let keeps = match api.get("probestatuses.kubeprober.erda.cloud").await {
            Ok(crd) => crd_keeps_diagnosis(&crd),
            // Cannot tell: the annotation works with any CRD.
            Err(_) => false,
        };
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((keeps, Instant::now()));
        keeps
    }
}

/// True when the CRD's schema declares `spec.checkers[].diagnosis` (or keeps unknown fields).
pub fn crd_keeps_diagnosis(crd: &CustomResourceDefinition) -> bool {
    let v = serde_json::to_value(crd).unwrap_or_default();
    v["spec"]["versions"].as_array().into_iter().flatten().filter(|ver| ver["storage"] == json!(true)).any(|ver| {
        let checker = &ver["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["checkers"]["items"];
        checker["properties"]["diagnosis"].is_object() || checker["x-kubernetes-preserve-unknown-fields"] == json!(true)
    })
}

/// The most evidence copied next to a checker: the rest is on the Abnormal.
const MAX_EVIDENCE: usize = 5;

/// The diagnosis of a checker from what the controller found about the cluster when the episode
/// opened (`cluster`, see `probes::cluster`) and the Abnormals of its episode (one per node).
///
/// A root cause found by either is the diagnosis; once every Abnormal ended and neither found
/// one, the reason is [`NO_CAUSE_FOUND`] and the message says what was checked, so an episode
/// that found nothing never reads like one that succeeded.
pub fn combine(cluster: Option<&RootCause>, abnormals: &[Abnormal]) -> CheckerDiagnosis {
    let names: Vec<String> = abnormals
        .iter()
        .map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()))
        .collect();
    let phases: Vec<Option<AbnormalPhase>> = abnormals.iter().map(Abnormal::phase).collect();
    let phase = match phases
        .iter()
        .find(|p| !p.is_some_and(AbnormalPhase::is_final))
    {
        Some(Some(p)) => p.as_str().to_owned(),
        Some(None) => "Pending".to_owned(),
        // Only the controller's look at the cluster: it ended when the episode opened.
        None if abnormals.is_empty() && cluster.is_some() => "Succeeded".to_owned(),
        None if abnormals.is_empty() => "Failed".to_owned(),
        None if phases.iter().all(|p| *p == Some(AbnormalPhase::Succeeded)) => {
            "Succeeded".to_owned()
        }
        None => "Failed".to_owned(),
    };
    let node_causes: Vec<(&Abnormal, &RootCause)> = abnormals
        .iter()
        .filter_map(|a| {
            a.status
                .as_ref()
                .and_then(|s| s.root_cause.as_ref())
                .map(|r| (a, r))
        })
        .collect();
    let prefix_nodes = abnormals.len() > 1 || cluster.is_some();
    let mut causes: Vec<String> = cluster.iter().map(|r| r.summary.clone()).collect();
    for (a, r) in &node_causes {
        let text = if prefix_nodes {
            format!("node {}: {}", a.spec.node_name, r.summary)
        } else {
            r.summary.clone()
        };
        if !causes.contains(&text) {
            causes.push(text);
        }
    }
    let first = cluster.or(node_causes.first().map(|(_, r)| *r));
    let ended = phase == "Succeeded" || phase == "Failed";
    let (reason, message) = match first {
        Some(r) => (r.reason.clone(), String::new()),
        None if ended => (NO_CAUSE_FOUND.to_owned(), what_was_checked(abnormals)),
        None => (String::new(), String::new()),
    };
    // An Abnormal that ran only collectors ends Succeeded; the checker's diagnosis did not.
    let phase = if reason == NO_CAUSE_FOUND {
        "Failed".to_owned()
    } else {
        phase
    };
    CheckerDiagnosis {
        abnormal: names.join(", "),
        phase,
        root_cause: causes.join("; "),
        reason,
        message,
        evidence: first
            .map(|r| r.evidence.iter().take(MAX_EVIDENCE).cloned().collect())
            .unwrap_or_default(),
    }
}

/// "no cause found: …" naming, per node, the processors each Abnormal ran and how it ended.
/// Built from the spec and the end reason only: the controller's cache keeps no step records.
fn what_was_checked(abnormals: &[Abnormal]) -> String {
    if abnormals.is_empty() {
        return "no cause found: no Abnormal was created and the controller's checks of the cluster found nothing (see the episode in the annotation kdiag.io/episodes)".into();
    }
    let names = |list: &[kdiag_api::NamespacedName]| {
        list.iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let per_node: Vec<String> = abnormals
        .iter()
        .map(|a| {
            let mut ran = Vec::new();
            if let Some(p) = &a.spec.pod_reference {
                ran.push(format!("the pod triage of pod {}/{}", p.namespace, p.name));
            }
            if !a.spec.assigned_information_collectors.is_empty() {
                ran.push(format!(
                    "collectors {}",
                    names(&a.spec.assigned_information_collectors)
                ));
            }
            if a.spec.assigned_diagnosers.is_empty() && a.spec.pod_reference.is_none() {
                ran.push("no diagnoser (the source names none)".into());
            } else if !a.spec.assigned_diagnosers.is_empty() {
                ran.push(format!("diagnosers {}", names(&a.spec.assigned_diagnosers)));
            }
            let end = a
                .status
                .as_ref()
                .map(|s| match (s.reason.as_str(), s.message.as_str()) {
                    ("", _) => String::new(),
                    (r, "") => format!(" — ended {r}"),
                    (r, m) => format!(" — ended {r}: {}", cut(m, 400)),
                })
                .unwrap_or_default();
            format!(
                "on node {} ({}) ran {}{end}",
                a.spec.node_name,
                a.name_any(),
                if ran.is_empty() {
                    "nothing".to_owned()
                } else {
                    ran.join(", ")
                }
            )
        })
        .collect();
    format!(
        "no cause found: {}; none of them named a cause",
        per_node.join("; ")
    )
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// Brings the checker's diagnosis up to date with `abnormal` and its siblings. Idempotent; an
/// error (also losing [`CONFLICT_ATTEMPTS`] races in a row) is returned so that it is retried.
pub async fn sync(
    client: &Client,
    store: &Store<DeserializeGuard<Abnormal>>,
    schema: &SchemaProbe,
    abnormal: &Abnormal,
) -> Result<(), Error> {
    let Some(probe) = abnormal.spec.probe_status.clone() else {
        return Ok(());
    };
    let probe_key = format!("{}/{}", probe.namespace, probe.name);
    let api: &Api<ProbeStatus> = &Api::namespaced(client.clone(), &probe.namespace);
    let field_mode = schema.keeps_diagnosis_field(client).await;
    let probe = &probe;
    let write = move || async move {
        let Some(ps) = api.get_opt(&probe.name).await? else {
            return Ok(());
        };
        let episodes: Episodes = ps
            .annotations()
            .get(EPISODES_ANNOTATION)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let (names, cluster) = match episodes.get(&probe.checker) {
            Some(e) if e.abnormals.contains(&abnormal.name_any()) => {
                (e.abnormals.clone(), e.cluster.clone())
            }
            // A newer episode is open: this Abnormal's news is stale.
            Some(_) => return Ok(()),
            None => (vec![abnormal.name_any()], None),
        };
        let siblings: Vec<Abnormal> = names
            .iter()
            .map(|n| {
                if *n == abnormal.name_any() {
                    return Some(abnormal.clone());
                }
                store
                    .get(&ObjectRef::new(n).within(&probe.namespace))
                    .and_then(|o| o.0.as_ref().ok().cloned())
            })
            .collect::<Option<Vec<_>>>()
            .unwrap_or_else(|| vec![abnormal.clone()]);
        let diagnosis = combine(cluster.as_ref(), &siblings);
        put(api, &ps, &probe.checker, field_mode, diagnosis).await
    };
    match write
        .retry(retry::on_conflict(CONFLICT_ATTEMPTS))
        .sleep(tokio::time::sleep)
        .when(retry::is_conflict)
        .await
    {
        Ok(()) => Ok(()),
        // Lost every race: the error policy requeues it.
        Err(e) if retry::is_conflict(&e) => Err(Error::WritebackContended {
            probe: probe_key,
            abnormal: format!(
                "{}/{}",
                abnormal.namespace().unwrap_or_default(),
                abnormal.name_any()
            ),
        }),
        Err(e) => Err(Error::kube(
            "write diagnosis to ProbeStatus",
            format!("ProbeStatus {probe_key}"),
            e,
        )),
    }
}

/// Writes `diagnosis` next to `checker` (the extension field, else the annotation) unless it is
/// there already. A conflict is returned for the caller to retry on a fresh read.
async fn put(
    api: &Api<ProbeStatus>,
    ps: &ProbeStatus,
    checker: &str,
    field_mode: bool,
    diagnosis: CheckerDiagnosis,
) -> Result<(), kube::Error> {
    let name = ps.name_any();
    if field_mode {
        let mut updated = ps.clone();
        let Some(entry) = updated.spec.checkers.iter_mut().find(|c| c.name == checker) else {
            return Ok(());
        };
        if entry.diagnosis.as_ref() == Some(&diagnosis) {
            return Ok(());
        }
        entry.diagnosis = Some(diagnosis);
        api.replace(&name, &PostParams::default(), &updated)
            .await
            .map(|_| ())
    } else {
        let mut all: BTreeMap<String, CheckerDiagnosis> = ps
            .annotations()
            .get(DIAGNOSES_ANNOTATION)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        if all.get(checker) == Some(&diagnosis) {
            return Ok(());
        }
        all.insert(checker.to_owned(), diagnosis);
        let patch = json!({"metadata": {
            "resourceVersion": ps.resource_version(),
            "annotations": {DIAGNOSES_ANNOTATION: serde_json::to_string(&all).unwrap_or_default()},
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
    }
}

/// Writes the diagnosis of an episode that has no Abnormal: a cluster-level check the
/// controller diagnosed itself when the episode opened (no Abnormal changes phase to bring it
/// here). Idempotent; called by the trigger after it recorded the episode.
pub async fn write_without_abnormals(
    client: &Client,
    schema: &SchemaProbe,
    namespace: &str,
    probe: &str,
    checker: &str,
) -> Result<(), Error> {
    let api: &Api<ProbeStatus> = &Api::namespaced(client.clone(), namespace);
    let field_mode = schema.keeps_diagnosis_field(client).await;
    let write = move || async move {
        let Some(ps) = api.get_opt(probe).await? else {
            return Ok(());
        };
        let episodes: Episodes = ps
            .annotations()
            .get(EPISODES_ANNOTATION)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        let Some(episode) = episodes.get(checker).filter(|e| e.abnormals.is_empty()) else {
            return Ok(());
        };
        let diagnosis = combine(episode.cluster.as_ref(), &[]);
        put(api, &ps, checker, field_mode, diagnosis).await
    };
    write
        .retry(retry::on_conflict(CONFLICT_ATTEMPTS))
        .sleep(tokio::time::sleep)
        .when(retry::is_conflict)
        .await
        .map_err(|e| {
            Error::kube(
                "write diagnosis to ProbeStatus",
                format!("ProbeStatus {namespace}/{probe}"),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_api::{AbnormalStatus, RootCause};

    fn ab(name: &str, node: &str, phase: Option<AbnormalPhase>, cause: Option<&str>) -> Abnormal {
        let mut a = Abnormal::new(name, Default::default());
        a.metadata.namespace = Some("kubeprober".into());
        a.spec.node_name = node.into();
        a.status = Some(AbnormalStatus {
            phase,
            root_cause: cause.map(|c| RootCause {
                summary: c.into(),
                reason: "X".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        a
    }

    #[test]
    fn one_abnormal_gives_its_phase_and_root_cause() {
        let d = combine(
            None,
            &[ab(
                "a",
                "n1",
                Some(AbnormalPhase::Succeeded),
                Some("kubelet is down"),
            )],
        );
        assert_eq!(
            d,
            CheckerDiagnosis {
                abnormal: "kubeprober/a".into(),
                phase: "Succeeded".into(),
                root_cause: "kubelet is down".into(),
                reason: "X".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn several_nodes_are_named_and_the_episode_is_running_until_all_end() {
        let d = combine(
            None,
            &[
                ab("a", "n1", Some(AbnormalPhase::Succeeded), Some("disk full")),
                ab("b", "n2", Some(AbnormalPhase::Diagnosing), None),
            ],
        );
        assert_eq!(d.phase, "Diagnosing");
        assert_eq!(d.abnormal, "kubeprober/a, kubeprober/b");
        assert_eq!(d.root_cause, "node n1: disk full");
        let d = combine(
            None,
            &[
                ab("a", "n1", Some(AbnormalPhase::Succeeded), None),
                ab("b", "n2", Some(AbnormalPhase::Failed), None),
            ],
        );
        assert_eq!(d.phase, "Failed");
    }

    #[test]
    fn an_episode_whose_abnormals_found_nothing_says_what_was_checked_not_success() {
        let mut a = ab("a", "n1", Some(AbnormalPhase::Succeeded), None);
        a.spec.assigned_information_collectors = vec![kdiag_api::NamespacedName::new(
            "kube-diagnoser",
            "node-collector",
        )];
        let d = combine(None, std::slice::from_ref(&a));
        assert_eq!(
            (d.phase.as_str(), d.reason.as_str()),
            ("Failed", NO_CAUSE_FOUND)
        );
        assert_eq!(d.root_cause, "");
        assert_eq!(
            d.message,
            "no cause found: on node n1 (a) ran collectors node-collector, no diagnoser (the source names none); none of them named a cause"
        );
        let mut b = ab("b", "n2", Some(AbnormalPhase::Failed), None);
        b.spec.assigned_diagnosers = vec![kdiag_api::NamespacedName::new(
            "kube-diagnoser",
            "node-triage-diagnoser",
        )];
        let st = b.status.as_mut().unwrap();
        st.reason = "NotIdentified".into();
        st.message = "no diagnoser identified the cause: checked node n2".into();
        let d = combine(None, &[a.clone(), b]);
        assert_eq!(
            (d.phase.as_str(), d.reason.as_str()),
            ("Failed", NO_CAUSE_FOUND)
        );
        assert!(
            d.message.contains(
                "on node n2 (b) ran diagnosers node-triage-diagnoser — ended NotIdentified: no diagnoser identified the cause: checked node n2"
            ),
            "{}",
            d.message
        );
        // Still running: neither a cause nor "no cause".
        let running = ab("c", "n1", Some(AbnormalPhase::Diagnosing), None);
        let d = combine(None, &[running]);
        assert_eq!((d.reason.as_str(), d.message.as_str()), ("", ""));
    }

    #[test]
    fn the_controllers_finding_about_the_cluster_comes_first_and_counts_as_a_cause() {
        let cluster = RootCause {
            reason: "ClusterDNSNoReadyEndpoints".into(),
            summary: "cluster DNS Service kube-system/kube-dns has no ready endpoint".into(),
            evidence: vec![kdiag_api::Evidence {
                kind: "Endpoints".into(),
                message: "no ready address".into(),
                object: "endpoints/kube-system/kube-dns".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let d = combine(
            Some(&cluster),
            &[ab(
                "a",
                "n1",
                Some(AbnormalPhase::Succeeded),
                Some("pod coredns-1 crash-loops"),
            )],
        );
        assert_eq!(d.reason, "ClusterDNSNoReadyEndpoints");
        assert_eq!(
            d.root_cause,
            "cluster DNS Service kube-system/kube-dns has no ready endpoint; node n1: pod coredns-1 crash-loops"
        );
        assert_eq!(d.evidence.len(), 1);
        // Alone (no node to diagnose on), it is the whole, finished diagnosis.
        let d = combine(Some(&cluster), &[]);
        assert_eq!((d.phase.as_str(), d.abnormal.as_str()), ("Succeeded", ""));
        let d = combine(None, &[]);
        assert_eq!(d.reason, NO_CAUSE_FOUND);
    }

    #[test]
    fn kdiags_crd_keeps_the_diagnosis_field() {
        let crd = kdiag_api::crds::all()
            .into_iter()
            .find(|c| c.spec.names.kind == "ProbeStatus")
            .unwrap();
        assert!(crd_keeps_diagnosis(&crd));
        let mut kubeprober_crd = serde_json::to_value(&crd).unwrap();
        kubeprober_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["checkers"]["items"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("diagnosis");
        assert!(!crd_keeps_diagnosis(
            &serde_json::from_value(kubeprober_crd).unwrap()
        ));
    }
}
