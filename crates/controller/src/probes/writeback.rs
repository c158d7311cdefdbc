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
use kdiag_api::labels::DIAGNOSES_ANNOTATION;
use kdiag_api::{Abnormal, AbnormalPhase, CheckerDiagnosis, ProbeStatus};
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

/// The diagnosis of a checker from the Abnormals of its episode (one per node).
pub fn combine(abnormals: &[Abnormal]) -> CheckerDiagnosis {
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
        None if phases.iter().all(|p| *p == Some(AbnormalPhase::Succeeded)) => {
            "Succeeded".to_owned()
        }
        None => "Failed".to_owned(),
    };
    let causes: Vec<String> = abnormals
        .iter()
        .filter_map(|a| {
            a.status
                .as_ref()
                .and_then(|s| s.root_cause.as_ref())
                .map(|r| (a, r))
        })
        .map(|(a, r)| {
            if abnormals.len() > 1 {
                format!("{}: {}", a.spec.node_name, r.summary)
            } else {
                r.summary.clone()
            }
        })
        .collect();
    CheckerDiagnosis {
        abnormal: names.join(", "),
        phase,
        root_cause: causes.join("; "),
    }
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
        let names: Vec<String> = match episodes.get(&probe.checker) {
            Some(e) if e.abnormals.contains(&abnormal.name_any()) => e.abnormals.clone(),
            // A newer episode is open: this Abnormal's news is stale.
            Some(_) => return Ok(()),
            None => vec![abnormal.name_any()],
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
        let diagnosis = combine(&siblings);

        if field_mode {
            let mut updated = ps.clone();
            let Some(entry) = updated
                .spec
                .checkers
                .iter_mut()
                .find(|c| c.name == probe.checker)
            else {
                return Ok(());
            };
            if entry.diagnosis.as_ref() == Some(&diagnosis) {
                return Ok(());
            }
            entry.diagnosis = Some(diagnosis);
            api.replace(&probe.name, &PostParams::default(), &updated)
                .await
                .map(|_| ())
        } else {
            let mut all: BTreeMap<String, CheckerDiagnosis> = ps
                .annotations()
                .get(DIAGNOSES_ANNOTATION)
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default();
            if all.get(&probe.checker) == Some(&diagnosis) {
                return Ok(());
            }
            all.insert(probe.checker.clone(), diagnosis);
            let patch = json!({"metadata": {
                "resourceVersion": ps.resource_version(),
                "annotations": {DIAGNOSES_ANNOTATION: serde_json::to_string(&all).unwrap_or_default()},
            }});
            api.patch(&probe.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
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
        let d = combine(&[ab(
            "a",
            "n1",
            Some(AbnormalPhase::Succeeded),
            Some("kubelet is down"),
        )]);
        assert_eq!(
            d,
            CheckerDiagnosis {
                abnormal: "kubeprober/a".into(),
                phase: "Succeeded".into(),
                root_cause: "kubelet is down".into()
            }
        );
    }

    #[test]
    fn several_nodes_are_named_and_the_episode_is_running_until_all_end() {
        let d = combine(&[
            ab("a", "n1", Some(AbnormalPhase::Succeeded), Some("disk full")),
            ab("b", "n2", Some(AbnormalPhase::Diagnosing), None),
        ]);
        assert_eq!(d.phase, "Diagnosing");
        assert_eq!(d.abnormal, "kubeprober/a, kubeprober/b");
        assert_eq!(d.root_cause, "n1: disk full");
        let d = combine(&[
            ab("a", "n1", Some(AbnormalPhase::Succeeded), None),
            ab("b", "n2", Some(AbnormalPhase::Failed), None),
        ]);
        assert_eq!(d.phase, "Failed");
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
