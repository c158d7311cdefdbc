//! Stuck terminations: the pod was deleted and is still there. terminating-pod-diagnoser's
//! rules judge it (finalizers, live processes past the deadline, processes ignoring SIGTERM
//! under a long grace period, volumes still mounted, a kubelet that never confirmed).

use kdiag_api::plugin::ProcessorContext;

use super::facts::Facts;
use super::finding::{Finding, Rank};
use crate::terminating_pod;

/// Runs the terminating-pod judgement for a pod being deleted, when the agent is on its node
/// (processes and mounts are read locally); elsewhere only the finalizers can be judged.
pub async fn gather(ctx: &ProcessorContext, f: &mut Facts) {
    if f.pod().metadata.deletion_timestamp.is_none() {
        return;
    }
    let on_this_node = f
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(|n| n == ctx.node_name);
    let pod = f.pod().clone();
    match terminating_pod::judge_one(ctx, &pod).await {
        Ok((facts, mut verdict, notes)) => {
            if !on_this_node {
                // Another node's processes are not visible here: keep only what the pod object
                // itself shows.
                verdict.causes.retain(|c| c.reason == "FinalizersPresent");
            }
            f.terminating = Some((facts, verdict, notes));
        }
        Err(e) => {
            f.detail
                .problems
                .push(format!("judging the termination: {e}"));
        }
    }
}

pub fn check(f: &Facts) -> Vec<Finding> {
    let Some((facts, verdict, _)) = &f.terminating else {
        return Vec::new();
    };
    let when = if verdict.overdue_seconds >= 0 {
        format!(
            "is {} s past its deletion deadline",
            verdict.overdue_seconds
        )
    } else {
        "is terminating".to_owned()
    };
    let requested = facts.requested_at();
    verdict
        .causes
        .iter()
        .map(|c| {
            let mut finding = Finding::new(
                c.reason,
                Rank::Terminating,
                format!("pod {} {when}: {}", f.key(), c.message),
                c.suggestion.clone(),
            )
            .with_all(c.evidence.iter().cloned());
            finding.seen(Some(requested), Some(f.now));
            finding
        })
        .collect()
}
