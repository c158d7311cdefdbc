//! The cluster controller: admits each new Abnormal exactly once (validates it, resolves its pod
//! to a node, routes it to that node's agent) and garbage-collects finished ones.

mod admission;
mod fan_out;
pub mod gc;
pub mod no_agent;

use std::sync::Arc;
use std::time::Duration;

use kdiag_api::Abnormal;
use kdiag_pipeline::admission::Routing;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::recorder::UncachedRecorder;
use kdiag_runtime::registrations::Registrations;
use kdiag_runtime::time::now;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::{ControllerConfig, Error};

/// What admission, routing and GC share; built by [`crate::start`].
pub(crate) struct Ctx {
    pub(crate) client: Client,
    pub(crate) registrations: Registrations,
    pub(crate) builtins: Builtins,
    pub(crate) recorder: UncachedRecorder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: ControllerConfig,
}

/// Admits an Abnormal that has no phase yet, forward only: route it, then accept it (see
/// [`admission`]). Everything later in its life belongs to its agent; the ProbeStatus
/// write-back has its own controller (`crate::probes::writeback`).
pub(crate) async fn reconcile(
    obj: Arc<DeserializeGuard<Abnormal>>,
    ctx: Arc<Ctx>,
) -> Result<Action, Error> {
    let abnormal = match &obj.0 {
        Ok(a) => a,
        Err(invalid) => return reject_malformed(&ctx, invalid).await,
    };
    if let Some(phase) = abnormal.status.as_ref().and_then(|s| s.phase) {
        if !phase.is_final() && kdiag_pipeline::admission::fan_out::fans_out(abnormal) {
            return fan_out::follow(&ctx, abnormal).await;
        }
        return Ok(Action::await_change());
    }
    match Routing::recorded(abnormal) {
        None => admission::admit(&ctx, abnormal).await,
        Some(_) => admission::finish(&ctx, abnormal).await,
    }
}

async fn reject_malformed(ctx: &Ctx, invalid: &InvalidObject) -> Result<Action, Error> {
    let ns = invalid.metadata.namespace.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Abnormal>(&()),
    );
    let err = |e| Error::kube("reject malformed", format!("Abnormal {ns}/{name}"), e);
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

/// A transient error (the apiserver unavailable or slow, a lost race) is retried in 5 s; a
/// permanent one (RBAC, a refused request) needs someone to act, so it is retried only every
/// minute, and said louder.
pub(crate) fn error_policy(
    _obj: Arc<DeserializeGuard<Abnormal>>,
    error: &Error,
    ctx: Arc<Ctx>,
) -> Action {
    ctx.metrics
        .controller
        .error("admission", error.metric_label(), error.category());
    if error.is_transient() {
        tracing::warn!(error = %error, "admission failed; retrying in 5s");
        Action::requeue(Duration::from_secs(5))
    } else {
        tracing::error!(error = %error, "admission failed; retrying in 60s");
        Action::requeue(Duration::from_secs(60))
    }
}

pub(crate) async fn publish(
    ctx: &Ctx,
    abnormal: &Abnormal,
    reason: &str,
    note: &str,
    warning: bool,
) {
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

pub(crate) fn key(a: &Abnormal) -> String {
    format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any())
}
