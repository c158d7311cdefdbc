//! Admission, the IO part: gathers what [`kdiag_pipeline::admission::decide`] decides on, then
//! writes its decision, forward only.
//!
//! An Abnormal without a phase goes through two writes, each conditional on the resourceVersion
//! it was decided on, so each happens once even across controller restarts and races:
//!
//! 1. **route**: a merge patch of the node label, `spec.nodeName`, the stand-in annotation and
//!    the processors admission chose. Nothing runs yet: the agent waits for a phase.
//! 2. **accept**: the status (phase InformationCollecting, condition Accepted) made from what the
//!    routed object records ([`Routing::recorded`]), then the Accepted Event.
//!
//! A controller that stops between the two finds a routed Abnormal without a phase and does
//! only step 2, from the routed fields; it never decides or routes again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kdiag_api::Abnormal;
use kdiag_pipeline::admission::{self, Decision, Facts, PodLookup, Route, Routing, StandIns};
use kdiag_runtime::registrations::AdmissionRegistry;
use kdiag_runtime::time::now;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Ctx, key, publish};
use crate::Error;

/// How soon a write that lost a race is decided again, on a fresher copy.
const AFTER_CONFLICT: Duration = Duration::from_millis(200);

/// Decides about an Abnormal nobody has routed yet, and writes the decision.
pub(super) async fn admit(ctx: &Ctx, abnormal: &Abnormal) -> Result<Action, Error> {
    let registry = AdmissionRegistry {
        registrations: &ctx.registrations,
        builtins: &ctx.builtins,
    };
    // Once per admission: what is decided on is what is routed.
    let every = admission::with_every_registered(abnormal, &registry);
    let listed = every.as_ref().unwrap_or(abnormal);
    let triaged = admission::with_triage(listed, &ctx.config.triage, &registry);
    let effective = triaged.as_ref().unwrap_or(listed);
    if admission::fan_out::fans_out(effective) && ctx.config.fan_out_max_nodes > 0 {
        // Checked as each node's child will be: everything but the target.
        let mut on_a_node = effective.clone();
        on_a_node.spec.node_name = "every-node".into();
        if let Err(e) = admission::validate(&on_a_node, &registry) {
            let (reason, message) = e.rejection();
            return reject(ctx, abnormal, reason, &message).await;
        }
        return super::fan_out::fan_out(ctx, abnormal, effective).await;
    }
    let pod = if effective.spec.node_name.is_empty() && effective.spec.pod_reference.is_some() {
        lookup_pod(ctx, abnormal).await?
    } else {
        PodLookup::NotNeeded
    };
    let mut facts = Facts {
        node_exists: if effective.spec.node_name.is_empty() {
            None
        } else {
            Some(node_exists(ctx, abnormal, &effective.spec.node_name).await?)
        },
        pod,
        stand_ins: StandIns::default(),
        waited: abnormal
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
            .unwrap_or_default(),
        pod_wait: ctx.config.pod_wait,
    };
    if admission::needs_stand_ins(effective, &facts) {
        facts.stand_ins = stand_ins(ctx, abnormal).await?;
    }
    match admission::decide(effective, &registry, &facts) {
        Decision::Admit(route) => match self::route(ctx, abnormal, &route).await? {
            Some(routed) => accept(ctx, &routed).await,
            None => Ok(Action::requeue(AFTER_CONFLICT)),
        },
        Decision::Reject { reason, message } => reject(ctx, abnormal, reason, &message).await,
        Decision::Wait {
            reason,
            message,
            retry_after,
        } => {
            let mut updated = abnormal.clone();
            if admission::wait(updated.status.get_or_insert_default(), reason, &message) {
                write_status(ctx, &updated).await?;
            }
            count(ctx, "waiting");
            Ok(Action::requeue(retry_after))
        }
    }
}

/// Finishes the admission of an Abnormal routed by a controller that stopped before accepting
/// it. The cache may lag this controller's own acceptance, so the stored copy decides.
pub(super) async fn finish(ctx: &Ctx, cached: &Abnormal) -> Result<Action, Error> {
    let api = abnormals(ctx, cached);
    match api.get_opt(&cached.name_any()).await {
        Ok(Some(stored)) if stored.status.as_ref().and_then(|s| s.phase).is_none() => {
            accept(ctx, &stored).await
        }
        Ok(_) => Ok(Action::await_change()),
        Err(e) => Err(api_error(ctx, "get", cached, e)),
    }
}

/// Accepts a routed Abnormal: the status says where it runs, made from the routed fields; then
/// the Accepted Event. What was routed is validated again, so an Abnormal labelled for a node by
/// hand is not accepted unchecked.
async fn accept(ctx: &Ctx, routed: &Abnormal) -> Result<Action, Error> {
    let Some(routing) = Routing::recorded(routed) else {
        return Ok(Action::await_change());
    };
    let registry = AdmissionRegistry {
        registrations: &ctx.registrations,
        builtins: &ctx.builtins,
    };
    if let Err(e) = admission::validate(routed, &registry) {
        let (reason, message) = e.rejection();
        return reject(ctx, routed, reason, &message).await;
    }
    let mut updated = routed.clone();
    admission::accept(updated.status.get_or_insert_default(), &routing, &now());
    // The resourceVersion of the routed copy: if anyone accepted it meanwhile, this fails.
    if !write_status(ctx, &updated).await? {
        return Ok(Action::requeue(AFTER_CONFLICT));
    }
    count(ctx, "accepted");
    let message = routing.accepted_message();
    publish(ctx, routed, "Accepted", &message, false).await;
    tracing::info!(abnormal = %key(routed), node = %routing.node, stand_in = routing.stand_in.is_some(), "admitted");
    Ok(Action::await_change())
}

pub(super) async fn reject(
    ctx: &Ctx,
    abnormal: &Abnormal,
    reason: &'static str,
    message: &str,
) -> Result<Action, Error> {
    let mut updated = abnormal.clone();
    admission::reject(
        updated.status.get_or_insert_default(),
        reason,
        message,
        &now(),
    );
    if !write_status(ctx, &updated).await? {
        return Ok(Action::requeue(AFTER_CONFLICT));
    }
    count(ctx, "rejected");
    publish(ctx, abnormal, "Rejected", message, true).await;
    tracing::info!(abnormal = %key(abnormal), reason, message = %message, "rejected");
    Ok(Action::await_change())
}

/// Writes the route. Returns the routed object, or None when the Abnormal changed since it was
/// read (someone routed it, or edited it) or is gone: it is then decided again, from fresh.
async fn route(ctx: &Ctx, abnormal: &Abnormal, route: &Route) -> Result<Option<Abnormal>, Error> {
    let patch = route.patch(abnormal);
    match abnormals(ctx, abnormal)
        .patch(
            &abnormal.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(routed) => Ok(Some(routed)),
        Err(e)
            if kdiag_runtime::error::is_conflict(&e) || kdiag_runtime::error::is_not_found(&e) =>
        {
            Ok(None)
        }
        Err(e) => Err(api_error(ctx, "patch labels", abnormal, e)),
    }
}

/// Writes status with the copy's resourceVersion as precondition. False when the object changed
/// meanwhile or is gone.
pub(super) async fn write_status(ctx: &Ctx, abnormal: &Abnormal) -> Result<bool, Error> {
    match abnormals(ctx, abnormal)
        .replace_status(&abnormal.name_any(), &PostParams::default(), abnormal)
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if kdiag_runtime::error::is_conflict(&e) || kdiag_runtime::error::is_not_found(&e) =>
        {
            Ok(false)
        }
        Err(e) => Err(api_error(ctx, "replace_status", abnormal, e)),
    }
}

/// Whether Node `name` exists (its metadata is all that is read).
async fn node_exists(ctx: &Ctx, abnormal: &Abnormal, name: &str) -> Result<bool, Error> {
    Api::<Node>::all(ctx.client.clone())
        .get_metadata_opt(name)
        .await
        .map(|n| n.is_some())
        .map_err(|e| api_error(ctx, "get node", abnormal, e))
}

async fn lookup_pod(ctx: &Ctx, abnormal: &Abnormal) -> Result<PodLookup, Error> {
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
        Err(e) => {
            ctx.metrics
                .controller
                .api_errors
                .with_label_values(&["get pod"])
                .inc();
            Err(Error::kube("get pod", format!("Pod {key}"), e))
        }
    }
}

/// The nodes that could stand in for a pod on no node: those running a kdiag agent (its
/// DaemonSet's pods in kube-diagnoser), and only if there is none, the Ready nodes.
async fn stand_ins(ctx: &Ctx, abnormal: &Abnormal) -> Result<StandIns, Error> {
    let system = kdiag_api::SYSTEM_NAMESPACE;
    let agents = Api::<Pod>::namespaced(ctx.client.clone(), system)
        .list(&ListParams::default().labels("app.kubernetes.io/name=kdiag-agent"))
        .await
        .map_err(|e| api_error(ctx, "list kdiag-agent pods", abnormal, e))?;
    let agent_nodes: Vec<String> = agents
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    let ready_nodes = if agent_nodes.is_empty() {
        Api::<Node>::all(ctx.client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| api_error(ctx, "list nodes", abnormal, e))?
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
    Ok(StandIns {
        agent_nodes,
        ready_nodes,
    })
}

fn abnormals(ctx: &Ctx, a: &Abnormal) -> Api<Abnormal> {
    Api::namespaced(ctx.client.clone(), &a.namespace().unwrap_or_default())
}

fn count(ctx: &Ctx, result: &str) {
    ctx.metrics
        .controller
        .admissions
        .with_label_values(&[result])
        .inc();
}

/// An apiserver error while admitting `abnormal`, counted by operation.
fn api_error(ctx: &Ctx, operation: &'static str, abnormal: &Abnormal, e: kube::Error) -> Error {
    ctx.metrics
        .controller
        .api_errors
        .with_label_values(&[operation])
        .inc();
    Error::kube(operation, format!("Abnormal {}", key(abnormal)), e)
}
