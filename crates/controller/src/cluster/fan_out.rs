//! Fan-out, the IO part ([`kdiag_pipeline::admission::fan_out`] decides): an Abnormal that names
//! no node and no pod gets one child Abnormal per node, created before the parent is accepted
//! (deterministic names, so a retry after a crash creates none twice), and the parent's status
//! follows its children until every one has ended.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kdiag_api::Abnormal;
use kdiag_api::labels::FAN_OUT_PARENT_LABEL;
use kdiag_pipeline::admission::fan_out;
use kdiag_runtime::time::now;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::Action;

use super::{Ctx, key, publish};
use crate::Error;

/// How often a fanned-out parent looks at its children while any runs.
const FOLLOW: Duration = Duration::from_secs(2);

/// Creates the children of `parent` (with the processors admission completed in `effective`)
/// and accepts the parent; or rejects it when the cluster has more nodes than allowed.
pub(super) async fn fan_out(
    ctx: &Ctx,
    parent: &Abnormal,
    effective: &Abnormal,
) -> Result<Action, Error> {
    let max = ctx.config.fan_out_max_nodes;
    let mut nodes: Vec<String> = Api::<Node>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| Error::kube("list nodes for", format!("Abnormal {}", key(parent)), e))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    nodes.sort();
    if nodes.len() > max {
        let message = format!(
            "neither spec.nodeName nor spec.podReference is set, so it would run on every node, but the cluster has {} nodes and the controller's --fan-out-max-nodes is {max}: set spec.nodeName (one Abnormal per node), or raise the limit",
            nodes.len()
        );
        return super::admission::reject(ctx, parent, fan_out::FAN_OUT_TOO_LARGE, &message).await;
    }
    let api: Api<Abnormal> =
        Api::namespaced(ctx.client.clone(), &parent.namespace().unwrap_or_default());
    for node in &nodes {
        let child = fan_out::child(parent, effective, node);
        match api.create(&PostParams::default(), &child).await {
            Ok(_) => {}
            Err(e) if kdiag_runtime::error::is_conflict(&e) => {}
            Err(e) => {
                return Err(Error::kube(
                    "create the fan-out child of",
                    format!("Abnormal {}", key(parent)),
                    e,
                ));
            }
        }
    }
    let mut updated = parent.clone();
    fan_out::accept(
        updated.status.get_or_insert_default(),
        &parent.name_any(),
        &nodes,
        &now(),
    );
    if !super::admission::write_status(ctx, &updated).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    publish(
        ctx,
        parent,
        "Accepted",
        &format!("fanned out to {} nodes: one Abnormal per node", nodes.len()),
        false,
    )
    .await;
    tracing::info!(abnormal = %key(parent), nodes = nodes.len(), "fanned out");
    Ok(Action::requeue(FOLLOW))
}

/// Brings an accepted parent's status up to date with its children; looks again in a moment
/// while any runs.
pub(super) async fn follow(ctx: &Ctx, cached: &Abnormal) -> Result<Action, Error> {
    let ns = cached.namespace().unwrap_or_default();
    let api: Api<Abnormal> = Api::namespaced(ctx.client.clone(), &ns);
    let err = |op: &'static str| {
        let what = format!("Abnormal {}", key(cached));
        move |e| Error::kube(op, what, e)
    };
    // The cache keeps no status.context, where the children are listed.
    let Some(mut parent) = api.get_opt(&cached.name_any()).await.map_err(err("get"))? else {
        return Ok(Action::await_change());
    };
    let Some(status) = parent.status.as_mut() else {
        return Ok(Action::await_change());
    };
    if status.phase.is_some_and(|p| p.is_final()) {
        return Ok(Action::await_change());
    }
    let uid = parent.metadata.uid.clone().unwrap_or_default();
    let children = api
        .list(&ListParams::default().labels(&format!("{FAN_OUT_PARENT_LABEL}={uid}")))
        .await
        .map_err(err("list the fan-out children of"))?
        .items;
    let mut entries = fan_out::children(status);
    let mut causes = Vec::new();
    for entry in &mut entries {
        let child = children.iter().find(|c| c.name_any() == entry.abnormal);
        fan_out::observe(entry, child);
        if let Some(cause) = child
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.root_cause.clone())
        {
            causes.push((entry.node.clone(), cause));
        }
    }
    if fan_out::summarise(status, entries, causes) {
        let ended = status.phase.is_some_and(|p| p.is_final());
        let message = status.message.clone();
        if !super::admission::write_status(ctx, &parent).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        if ended {
            let failed = parent.status.as_ref().is_some_and(|s| !s.reason.is_empty());
            publish(
                ctx,
                &parent,
                if failed {
                    fan_out::FAN_OUT_FAILED
                } else {
                    "Succeeded"
                },
                &message,
                failed,
            )
            .await;
            return Ok(Action::await_change());
        }
    }
    Ok(Action::requeue(FOLLOW))
}
