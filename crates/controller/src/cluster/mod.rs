//! The cluster controller: admits each new Abnormal exactly once (validates it, resolves its pod
//! to a node, routes it to that node's agent) and garbage-collects finished ones.

pub mod gc;
pub mod no_agent;
pub mod nodes;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kdiag_api::labels::{NODE_LABEL, node_label_value};
use kdiag_api::{Abnormal, AbnormalConditionType, AbnormalPhase, AbnormalStatus, ConditionStatus};
use kdiag_pipeline::admission::{self, Decision, PodLookup};
use kdiag_pipeline::set_condition;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::recorder::UncachedRecorder;
use kdiag_runtime::registrations::{AdmissionRegistry, Registrations};
use kdiag_runtime::time::now;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::ControllerConfig;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{operation} of Abnormal {abnormal}: {source}")]
    Api {
        abnormal: String,
        operation: &'static str,
        source: Box<kube::Error>,
    },
}

/// What admission, routing and GC share; built by [`crate::start`].
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) abnormals: Store<DeserializeGuard<Abnormal>>,
    pub(crate) probe_schema: crate::probes::writeback::SchemaProbe,
    pub(crate) registrations: Registrations,
    pub(crate) builtins: Builtins,
    pub(crate) recorder: UncachedRecorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: ControllerConfig,
}

pub(crate) async fn reconcile(
    obj: Arc<DeserializeGuard<Abnormal>>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let abnormal = match &obj.0 {
        Ok(a) => a,
        Err(invalid) => return reject_malformed(&ctx, invalid).await,
    };
    let status = abnormal.status.clone().unwrap_or_default();
    if abnormal.spec.probe_status.is_some() && status.phase.is_some() {
        // The root cause goes next to the probe result; failing to write it is retried.
        crate::probes::writeback::sync(&ctx.client, &ctx.abnormals, &ctx.probe_schema, abnormal)
            .await
            .map_err(|e| api_error(&ctx, abnormal, "write diagnosis to ProbeStatus", e))?;
    }
    match status.phase {
        None => admit(&ctx, abnormal).await,
        Some(_) if accepted(&status) && !abnormal.labels().contains_key(NODE_LABEL) => {
            // Admitted before a restart that came before routing: finish routing, admit nothing
            // again. The cache lags the routing patch that follows every admission, so look at
            // the stored object first: routing twice cost a write per Abnormal.
            let api: Api<Abnormal> = Api::namespaced(
                ctx.client.clone(),
                &abnormal.namespace().unwrap_or_default(),
            );
            match api.get_opt(&abnormal.name_any()).await {
                Ok(Some(stored)) if stored.labels().contains_key(NODE_LABEL) => {
                    return Ok(Action::await_change());
                }
                Ok(None) => return Ok(Action::await_change()),
                Ok(Some(_)) => {}
                Err(e) => return Err(api_error(&ctx, abnormal, "get", e)),
            }
            let node = status
                .conditions
                .iter()
                .find(|c| c.type_ == AbnormalConditionType::Accepted)
                .map(|c| c.message.clone());
            let routed = node.as_deref().and_then(|m| m.strip_prefix(ROUTED_PREFIX));
            let stand_in = routed.is_some_and(|m| m.contains(STAND_IN_MARK));
            let node = routed
                .and_then(|m| m.split(' ').next())
                .unwrap_or(&abnormal.spec.node_name)
                .to_owned();
            route(&ctx, abnormal, &node, stand_in).await?;
            Ok(Action::await_change())
        }
        Some(_) => Ok(Action::await_change()),
    }
}

const ROUTED_PREFIX: &str = "routed to node ";
/// Follows the node in the Accepted message when that node's agent stands in for a pod on no node.
const STAND_IN_MARK: &str = " to stand in for unscheduled pod ";

fn accepted(status: &AbnormalStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == AbnormalConditionType::Accepted && c.status == ConditionStatus::True)
}

async fn admit(ctx: &Ctx, abnormal: &Abnormal) -> Result<Action, ControllerError> {
    let pod = if abnormal.spec.node_name.is_empty() && abnormal.spec.pod_reference.is_some() {
        lookup_pod(ctx, abnormal).await?
    } else {
        PodLookup::NotNeeded
    };
    let waited = abnormal
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    let registry = AdmissionRegistry {
        registrations: &ctx.registrations,
        builtins: &ctx.builtins,
    };
    let triaged = admission::with_triage(abnormal, &ctx.config.triage, &registry);
    let effective = triaged.as_ref().unwrap_or(abnormal);
    let mut decision = admission::decide(effective, &registry, &pod, waited, ctx.config.pod_wait);
    if matches!(decision, Decision::Admit { .. })
        && let Some(rejection) = nodes::reject_unknown_node(ctx, abnormal).await?
    {
        decision = rejection;
    }
    // Set when another node's agent runs the diagnosis of a pod that is on no node.
    let mut stand_in: Option<String> = None;
    if let Decision::StandIn { pod, why } = &decision {
        decision = match pick_stand_in(ctx, abnormal).await? {
            Some(node) => {
                let (_, left_out) = admission::stand_in_collectors(effective);
                let mut note = format!(
                    "{STAND_IN_MARK}{pod}: it is on no node ({why}); only collectors that read the apiserver run"
                );
                if !left_out.is_empty() {
                    let names: Vec<String> = left_out.iter().map(|n| n.name.clone()).collect();
                    note.push_str(&format!(" (left out: {})", names.join(", ")));
                }
                stand_in = Some(note);
                Decision::Admit { node }
            }
            None if waited >= ctx.config.pod_wait => Decision::Reject {
                reason: "NoNodeToRunOn",
                message: format!(
                    "pod {pod} is on no node ({why}), and no node is Ready with a kdiag agent to diagnose it from; check `kubectl get nodes` and the kdiag-agent DaemonSet"
                ),
            },
            None => Decision::Wait {
                reason: "WaitingForNode",
                message: format!(
                    "pod {pod} is on no node ({why}); waiting for a Ready node with a kdiag agent to diagnose it from"
                ),
                retry_after: Duration::from_secs(2),
            },
        };
    }
    let api: Api<Abnormal> = Api::namespaced(
        ctx.client.clone(),
        &abnormal.namespace().unwrap_or_default(),
    );
    let now = now();
    let mut updated = abnormal.clone();
    let status = updated.status.get_or_insert_default();
    match decision {
        Decision::Admit { node } => {
            status.phase = Some(AbnormalPhase::InformationCollecting);
            status.start_time = Some(now.clone());
            status.reason.clear();
            status.message.clear();
            let msg = format!(
                "{ROUTED_PREFIX}{node}{}",
                stand_in.as_deref().unwrap_or_default()
            );
            set_condition(
                &mut status.conditions,
                AbnormalConditionType::Accepted,
                ConditionStatus::True,
                "Accepted",
                &msg,
                &now,
            );
            // The resourceVersion read makes this write fail if anyone admitted it meanwhile,
            // so an Abnormal is admitted once even across controller restarts.
            if !write_status(ctx, &api, &updated).await? {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            ctx.metrics
                .controller
                .admissions
                .with_label_values(&["accepted"])
                .inc();
            publish(ctx, abnormal, "Accepted", &msg, false).await;
            route(ctx, abnormal, &node, stand_in.is_some()).await?;
            tracing::info!(abnormal = %key(abnormal), node = %node, stand_in = stand_in.is_some(), "admitted");
            Ok(Action::await_change())
        }
        Decision::Reject { reason, message } => {
            status.phase = Some(AbnormalPhase::Failed);
            status.reason = reason.into();
            status.message = message.clone();
            set_condition(
                &mut status.conditions,
                AbnormalConditionType::Accepted,
                ConditionStatus::False,
                reason,
                &message,
                &now,
            );
            if !write_status(ctx, &api, &updated).await? {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            ctx.metrics
                .controller
                .admissions
                .with_label_values(&["rejected"])
                .inc();
            publish(ctx, abnormal, "Rejected", &message, true).await;
            tracing::info!(abnormal = %key(abnormal), reason, message = %message, "rejected");
            Ok(Action::await_change())
        }
        Decision::Wait {
            reason,
            message,
            retry_after,
        } => {
            if status.reason != reason || status.message != message {
                status.reason = reason.into();
                status.message = message;
                write_status(ctx, &api, &updated).await?;
            }
            ctx.metrics
                .controller
                .admissions
                .with_label_values(&["waiting"])
                .inc();
            Ok(Action::requeue(retry_after))
        }
        // Turned into Admit, Reject or Wait above, once the stand-in node is known.
        Decision::StandIn { .. } => Ok(Action::requeue(Duration::from_secs(1))),
    }
}

async fn lookup_pod(ctx: &Ctx, abnormal: &Abnormal) -> Result<PodLookup, ControllerError> {
    let key = admission::pod_key(abnormal);
    let (ns, name) = key.split_once('/').unwrap_or_default();
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(pod)) => Ok(PodLookup::Found {
            unschedulable: pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                }),
            node: pod.spec.and_then(|s| s.node_name),
        }),
        Ok(None) => Ok(PodLookup::Missing),
        Err(e) => Err(api_error(ctx, abnormal, "get pod", e)),
    }
}

/// The node whose agent diagnoses a pod that is on no node: one running a kdiag agent (its
/// DaemonSet's pods in kube-diagnoser), else a Ready node.
async fn pick_stand_in(ctx: &Ctx, abnormal: &Abnormal) -> Result<Option<String>, ControllerError> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), kdiag_api::SYSTEM_NAMESPACE);
    let agents = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=kdiag-agent"))
        .await
        .map_err(|e| api_error(ctx, abnormal, "list kdiag-agent pods", e))?;
    let agent_nodes: Vec<String> = agents
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    let ready_nodes: Vec<String> = if agent_nodes.is_empty() {
        Api::<k8s_openapi::api::core::v1::Node>::all(ctx.client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| api_error(ctx, abnormal, "list nodes", e))?
            .items
            .into_iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|n| n.metadata.name)
            .collect()
    } else {
        Vec::new()
    };
    Ok(admission::choose_stand_in(
        &agent_nodes,
        &ready_nodes,
        &key(abnormal),
    ))
}

/// Labels the Abnormal for its node's agent and records the node in spec.nodeName. A stand-in
/// (`stand_in`) keeps only the collectors that read the apiserver.
async fn route(
    ctx: &Ctx,
    abnormal: &Abnormal,
    node: &str,
    stand_in: bool,
) -> Result<(), ControllerError> {
    let api: Api<Abnormal> = Api::namespaced(
        ctx.client.clone(),
        &abnormal.namespace().unwrap_or_default(),
    );
    let mut patch = serde_json::json!({
        "metadata": {"labels": {NODE_LABEL: node_label_value(node)}},
        "spec": {"nodeName": node},
    });
    // The triage's processors arrive with the routing label, so the agent sees them at once.
    let registry = AdmissionRegistry {
        registrations: &ctx.registrations,
        builtins: &ctx.builtins,
    };
    let triaged = admission::with_triage(abnormal, &ctx.config.triage, &registry);
    if let Some(t) = &triaged {
        patch["spec"]["assignedInformationCollectors"] =
            serde_json::json!(t.spec.assigned_information_collectors);
        patch["spec"]["assignedDiagnosers"] = serde_json::json!(t.spec.assigned_diagnosers);
    }
    if stand_in {
        let (kept, _) = admission::stand_in_collectors(triaged.as_ref().unwrap_or(abnormal));
        patch["spec"]["assignedInformationCollectors"] = serde_json::json!(kept);
    }
    api.patch(
        &abnormal.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| api_error(ctx, abnormal, "patch labels", e))?;
    Ok(())
}

/// Writes status with a resourceVersion precondition. False when the object changed meanwhile.
async fn write_status(
    ctx: &Ctx,
    api: &Api<Abnormal>,
    abnormal: &Abnormal,
) -> Result<bool, ControllerError> {
    match api
        .replace_status(&abnormal.name_any(), &PostParams::default(), abnormal)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(api_error(ctx, abnormal, "replace_status", e)),
    }
}

async fn reject_malformed(ctx: &Ctx, invalid: &InvalidObject) -> Result<Action, ControllerError> {
    let ns = invalid.metadata.namespace.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Abnormal>(&()),
    );
    let err = |e| ControllerError::Api {
        abnormal: format!("{ns}/{name}"),
        operation: "reject malformed",
        source: Box::new(e),
    };
    let raw = api.get(&name).await.map_err(err)?;
    if raw.data["status"]["phase"].as_str().is_some() {
        return Ok(Action::await_change());
    }
    let message = format!(
        "kdiag cannot read this Abnormal: {}; fix it and create it again",
        invalid.error
    );
    let patch = serde_json::json!({"status": {"phase": "Failed", "reason": "InvalidAbnormal", "message": message,
        "conditions": [{"type": "Accepted", "status": "False", "reason": "InvalidAbnormal", "message": message,
                        "lastTransitionTime": now()}]}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(err)?;
    ctx.metrics
        .controller
        .admissions
        .with_label_values(&["rejected"])
        .inc();
    tracing::info!(abnormal = %format!("{ns}/{name}"), error = %invalid.error, "rejected malformed Abnormal");
    Ok(Action::await_change())
}

pub(crate) fn error_policy(
    _obj: Arc<DeserializeGuard<Abnormal>>,
    error: &ControllerError,
    _ctx: Arc<Ctx>,
) -> Action {
    tracing::warn!(error = %error, "admission failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn publish(ctx: &Ctx, abnormal: &Abnormal, reason: &str, note: &str, warning: bool) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Admit".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &abnormal.object_ref(&())).await {
        ctx.metrics
            .controller
            .api_errors
            .with_label_values(&["create_event"])
            .inc();
        tracing::warn!(abnormal = %key(abnormal), error = %e, "recording an event");
    }
}

/// Every gc_interval: deletes finished Abnormals past the TTL or beyond the per-node maximum.
pub(crate) async fn collect_garbage(
    ctx: Arc<Ctx>,
    store: Store<DeserializeGuard<Abnormal>>,
    shutdown: CancellationToken,
) {
    kdiag_runtime::ready::store_ready(&store).await;
    loop {
        let finished: Vec<gc::Finished> = store
            .state()
            .iter()
            .filter_map(|o| o.0.as_ref().ok())
            .filter_map(gc::finished)
            .collect();
        let picked = gc::select(
            &finished,
            jiff::Timestamp::now(),
            ctx.config.ttl,
            ctx.config.max_finished_per_node,
        );
        for (f, reason) in picked {
            let api: Api<Abnormal> = Api::namespaced(ctx.client.clone(), &f.namespace);
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(f.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&f.name, &dp).await {
                Ok(_) => {
                    ctx.metrics
                        .controller
                        .garbage_collected
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    ctx.metrics.controller.original_gc_success.inc();
                    tracing::debug!(abnormal = %format!("{}/{}", f.namespace, f.name), reason = reason.as_str(), "garbage-collected");
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    ctx.metrics.controller.original_gc_error.inc();
                    tracing::warn!(abnormal = %format!("{}/{}", f.namespace, f.name), error = %e, "garbage collection");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.gc_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn api_error(
    ctx: &Ctx,
    abnormal: &Abnormal,
    operation: &'static str,
    e: kube::Error,
) -> ControllerError {
    ctx.metrics
        .controller
        .api_errors
        .with_label_values(&[operation])
        .inc();
    ControllerError::Api {
        abnormal: key(abnormal),
        operation,
        source: Box::new(e),
    }
}

fn key(a: &Abnormal) -> String {
    format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any())
}
