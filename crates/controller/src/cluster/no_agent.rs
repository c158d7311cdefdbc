//! Abnormals no agent takes: an admitted Abnormal whose node has no running kdiag agent (or no
//! longer exists) would otherwise stay in its first stage forever, and garbage collection only
//! deletes finished ones. After a grace period (`--no-agent-grace`, default 10 minutes) such an
//! Abnormal ends `Failed` with reason `NoAgent` and a message that says what to check; garbage
//! collection then removes it like any finished one.
//!
//! "No agent took it" means: still in InformationCollecting with no step recorded, accepted
//! longer than the grace period ago, and its node does not exist or runs no kdiag-agent pod
//! (Running, in kube-diagnoser, label `app.kubernetes.io/name=kdiag-agent`). An Abnormal waiting
//! in the queue of a node whose agent runs is never failed this way.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use kdiag_api::labels::NODE_LABEL;
use kdiag_api::{Abnormal, AbnormalConditionType, AbnormalPhase, ConditionStatus};
use kube::api::{Api, ListParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::Ctx;

/// The reason of an Abnormal no agent took.
pub const NO_AGENT: &str = "NoAgent";
/// The default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// The label of the agent DaemonSet's pods (config/deploy/40-agent.yaml).
pub const AGENT_POD_SELECTOR: &str = "app.kubernetes.io/name=kdiag-agent";

/// An admitted Abnormal that has made no progress since it was accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub namespace: String,
    pub name: String,
    /// The node it is routed to (its routing label).
    pub node: String,
    pub accepted_at: Timestamp,
}

/// The Abnormal, if it was accepted more than `grace` before `now` and no agent has recorded
/// anything on it. Reads only what the controller's cache keeps (phase, conditions, labels);
/// [`untouched`] checks the step records on a fresh copy.
pub fn waiting_too_long(a: &Abnormal, now: Timestamp, grace: Duration) -> Option<Waiting> {
    let status = a.status.as_ref()?;
    if status.phase != Some(AbnormalPhase::InformationCollecting) {
        return None;
    }
    let node = a.labels().get(NODE_LABEL)?.clone();
    let accepted_at = status
        .conditions
        .iter()
        .find(|c| c.type_ == AbnormalConditionType::Accepted && c.status == ConditionStatus::True)?
        .last_transition_time
        .as_ref()
        .or(status.start_time.as_ref())?
        .0;
    let waited = now.duration_since(accepted_at);
    (waited.as_secs_f64() > grace.as_secs_f64()).then(|| Waiting {
        namespace: a.namespace().unwrap_or_default(),
        name: a.name_any(),
        node,
        accepted_at,
    })
}

/// True when no agent has touched the stored Abnormal: still in its first stage, no step record.
pub fn untouched(a: &Abnormal) -> bool {
    a.status.as_ref().is_some_and(|s| {
        s.phase == Some(AbnormalPhase::InformationCollecting)
            && s.processors.is_empty()
            && s.command_executors.is_empty()
            && s.profilers.is_empty()
    })
}

/// Why no agent will take an Abnormal on `node`, if none will: the node is gone, or runs no
/// agent. `nodes` are the cluster's nodes, `agent_nodes` those with a running agent pod.
pub fn why_no_agent(
    node: &str,
    nodes: &BTreeSet<String>,
    agent_nodes: &BTreeSet<String>,
    grace: Duration,
) -> Option<String> {
    let grace = humantime_ish(grace);
    if !nodes.contains(node) {
        Some(format!(
            "no kdiag agent took this Abnormal within {grace} of its admission: node {node} does not exist (deleted, or misnamed; `kubectl get nodes` lists them). Create the Abnormal again for an existing node"
        ))
    } else if !agent_nodes.contains(node) {
        Some(format!(
            "no kdiag agent took this Abnormal within {grace} of its admission: node {node} runs no kdiag-agent pod. Check the DaemonSet (`kubectl -n kube-diagnoser get pods -l {AGENT_POD_SELECTOR} -o wide`: its nodeSelector, tolerations, and the pod's Events), then create the Abnormal again"
        ))
    } else {
        None
    }
}

fn humantime_ish(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// Looks every `interval` until `shutdown`, failing Abnormals no agent took within `grace`.
pub(crate) async fn fail_abnormals_without_agent(
    ctx: Arc<Ctx>,
    store: Store<DeserializeGuard<Abnormal>>,
    grace: Duration,
    shutdown: CancellationToken,
) {
    kdiag_runtime::ready::store_ready(&store).await;
    // Often enough that an Abnormal ends soon after its grace period, and never busy.
    let interval = (grace / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    loop {
        if let Err(e) = sweep(&ctx, &store, grace).await {
            tracing::warn!(error = %e, "looking for Abnormals no agent took (retrying)");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn sweep(
    ctx: &Ctx,
    store: &Store<DeserializeGuard<Abnormal>>,
    grace: Duration,
) -> Result<(), kube::Error> {
    let now = Timestamp::now();
    let waiting: Vec<Waiting> = store
        .state()
        .iter()
        .filter_map(|o| o.0.as_ref().ok())
        .filter_map(|a| waiting_too_long(a, now, grace))
        .collect();
    if waiting.is_empty() {
        return Ok(());
    }
    // Metadata only: names are all that is needed.
    let nodes: BTreeSet<String> = Api::<Node>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let agent_nodes: BTreeSet<String> =
        Api::<Pod>::namespaced(ctx.client.clone(), kdiag_api::SYSTEM_NAMESPACE)
            .list(&ListParams::default().labels(AGENT_POD_SELECTOR))
            .await?
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect();
    for w in waiting {
        if let Some(why) = why_no_agent(&w.node, &nodes, &agent_nodes, grace) {
            fail(ctx, &w, &why).await?;
        }
    }
    Ok(())
}

/// Fails the stored Abnormal if it is still untouched; the write carries the resourceVersion
/// read, so an agent that starts on it meanwhile wins.
async fn fail(ctx: &Ctx, w: &Waiting, why: &str) -> Result<(), kube::Error> {
    let api: Api<Abnormal> = Api::namespaced(ctx.client.clone(), &w.namespace);
    let Some(mut a) = api.get_opt(&w.name).await? else {
        return Ok(());
    };
    if !untouched(&a) {
        return Ok(());
    }
    let status = a.status.get_or_insert_default();
    status.phase = Some(AbnormalPhase::Failed);
    status.reason = NO_AGENT.into();
    status.message = why.to_owned();
    match api
        .replace_status(&w.name, &PostParams::default(), &a)
        .await
    {
        Ok(_) => {}
        // Changed meanwhile (an agent took it) or deleted: nothing to do.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    ctx.metrics.controller.no_agent.inc();
    tracing::warn!(abnormal = %format!("{}/{}", w.namespace, w.name), node = %w.node, "{why}");
    let ev = Event {
        type_: EventType::Warning,
        reason: NO_AGENT.into(),
        note: Some(why.chars().take(1000).collect()),
        action: "Admit".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &a.object_ref(&())).await {
        tracing::warn!(abnormal = %format!("{}/{}", w.namespace, w.name), error = %e, "recording an event");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn abnormal(phase: &str, accepted: &str, labelled: bool, records: bool) -> Abnormal {
        let mut a: Abnormal = serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"nodeName": "n1"},
            "status": {"phase": phase, "startTime": accepted,
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "routed to node n1", "lastTransitionTime": accepted}]}
        }))
        .unwrap();
        if labelled {
            a.metadata.labels = Some([(NODE_LABEL.to_owned(), "n1".to_owned())].into());
        }
        if records {
            a.status.as_mut().unwrap().processors = serde_json::from_value(json!([
                {"processor": "ns/p", "kind": "Processor", "stage": "InformationCollecting",
                 "result": "Succeeded", "startTime": accepted}]))
            .unwrap();
        }
        a
    }

    const GRACE: Duration = Duration::from_secs(600);

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn only_routed_abnormals_in_their_first_stage_past_the_grace_period_wait_too_long() {
        let now = at("2026-12-01T10:30:00Z");
        let old = "2026-12-01T10:00:00Z";
        let recent = "2026-12-01T10:25:00Z";
        let w = waiting_too_long(
            &abnormal("InformationCollecting", old, true, false),
            now,
            GRACE,
        )
        .unwrap();
        assert_eq!((w.node.as_str(), w.name.as_str()), ("n1", "a"));
        assert!(
            waiting_too_long(
                &abnormal("InformationCollecting", recent, true, false),
                now,
                GRACE
            )
            .is_none()
        );
        for phase in ["Diagnosing", "Recovering", "Succeeded", "Failed"] {
            assert!(waiting_too_long(&abnormal(phase, old, true, false), now, GRACE).is_none());
        }
        // Not routed yet: routing is admission's business.
        assert!(
            waiting_too_long(
                &abnormal("InformationCollecting", old, false, false),
                now,
                GRACE
            )
            .is_none()
        );
    }

    #[test]
    fn an_abnormal_with_a_step_record_was_taken() {
        let old = "2026-12-01T10:00:00Z";
        assert!(untouched(&abnormal(
            "InformationCollecting",
            old,
            true,
            false
        )));
        assert!(!untouched(&abnormal(
            "InformationCollecting",
            old,
            true,
            true
        )));
        assert!(!untouched(&abnormal("Diagnosing", old, true, false)));
    }

    #[test]
    fn the_message_says_whether_the_node_is_gone_or_runs_no_agent() {
        let nodes: BTreeSet<String> = ["n1".into(), "n2".into()].into();
        let agents: BTreeSet<String> = ["n2".into()].into();
        let gone = why_no_agent("n9", &nodes, &agents, GRACE).unwrap();
        assert!(
            gone.contains("within 10m") && gone.contains("node n9 does not exist"),
            "{gone}"
        );
        let idle = why_no_agent("n1", &nodes, &agents, Duration::from_secs(90)).unwrap();
        assert!(
            idle.contains("within 1m30s") && idle.contains("node n1 runs no kdiag-agent pod"),
            "{idle}"
        );
        assert!(
            idle.contains("kubectl -n kube-diagnoser get pods"),
            "{idle}"
        );
        assert_eq!(why_no_agent("n2", &nodes, &agents, GRACE), None);
    }
}
