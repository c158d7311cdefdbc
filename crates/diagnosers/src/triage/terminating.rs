//! Stuck terminations: the pod was deleted and is still there. terminating-pod-diagnoser's
//! rules judge it (finalizers, live processes past the deadline, processes ignoring SIGTERM
//! under a long grace period, volumes still mounted, a kubelet that never confirmed).

use kdiag_api::Evidence;
use kdiag_api::context_keys::TERMINATING_POD_FINDINGS;
use kdiag_api::plugin::ProcessorContext;

use super::facts::Facts;
use super::finding::{Finding, Rank};
use crate::terminating_pod::{self, PodFacts, Role, Verdict};

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
    let mut findings: Vec<Finding> = verdict
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
        .collect();
    if verdict.overdue_seconds < 0 {
        findings.extend(within_grace(f, facts, verdict));
    }
    findings
}

/// A pod asked about while its grace period runs is still what the person asks about: say it
/// is terminating and what will hold it past the kubelet's SIGKILL (finalizers), or that
/// nothing will. The terminating-pod rules alone judge only what is already certain (a process
/// that ignores SIGTERM).
fn within_grace(f: &Facts, facts: &PodFacts, verdict: &Verdict) -> Vec<Finding> {
    // The kubelet's SIGKILL comes at deletionTimestamp, the apiserver removes the pod once the
    // kubelet confirms and no finalizer is left.
    let kill_at = facts.deletion_timestamp;
    let left = kill_at.duration_since(f.now).as_secs().max(0);
    let pod_object = format!("pod/{}", f.key());
    let state = Evidence {
        kind: "PodStatus".into(),
        object: pod_object.clone(),
        message: format!(
            "deletionTimestamp {kill_at} (deletion asked at {}, grace period {} s); finalizers [{}]",
            facts.requested_at(),
            facts.grace_seconds,
            facts.finalizers.join(", ")
        ),
        context_key: TERMINATING_POD_FINDINGS.into(),
        timestamp: None,
    };
    let mut out = Vec::new();
    let already = |r: &str| verdict.causes.iter().any(|c| c.reason == r);
    if !facts.finalizers.is_empty() && !already("FinalizersPresent") {
        let (ns, name) = (f.namespace(), f.name());
        out.push(
            Finding::new(
                "FinalizersPresent",
                Rank::Terminating,
                format!(
                    "pod {} is terminating ({} s of its grace period left): finalizer(s) {} will keep it in the apiserver after its containers stop, until the controller that owns them removes them",
                    f.key(),
                    left,
                    facts.finalizers.join(", ")
                ),
                format!(
                    "Find the controller that owns {} and why it has not removed it (its logs); remove it by hand only once what it guards is done: kubectl patch pod -n {ns} {name} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]'.",
                    facts.finalizers.join(", ")
                ),
            )
            .with_all([state.clone()]),
        );
    }
    if out.is_empty() && verdict.causes.is_empty() {
        let on_this_node = f
            .pod()
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(|n| n == facts.node);
        let running = facts
            .processes
            .iter()
            .filter(|p| p.role == Role::Container)
            .count();
        let processes = if !on_this_node {
            "its processes are on another node, so whether one ignores SIGTERM was not checked"
                .to_owned()
        } else if running == 0 {
            "no process of its containers is left".to_owned()
        } else {
            format!("its {running} container process(es) do not ignore SIGTERM")
        };
        out.push(
            Finding::new(
                "PodTerminating",
                Rank::Terminating,
                format!(
                    "pod {} is terminating, {left} s of its {} s grace period left: no finalizer holds it and {processes}, so it should be gone by {kill_at}, when the kubelet sends SIGKILL",
                    f.key(),
                    facts.grace_seconds
                ),
                format!(
                    "Nothing to do unless it is still there after {kill_at}; then kubectl diag run --pod {} again names what holds it.",
                    f.key()
                ),
            )
            .with_all([state]),
        );
    }
    for finding in &mut out {
        finding.seen(Some(facts.requested_at()), Some(f.now));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kdiag_collectors::pod_detail::PodDetail;
    use serde_json::json;

    use super::*;
    use crate::terminating_pod::{ProcessFact, rules};

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    /// A pod deleted at 0 with a 120 s grace period (deletionTimestamp 120), seen at `now`.
    fn judged(finalizers: &[&str], processes: Vec<ProcessFact>, now: i64) -> Facts {
        let pod = PodFacts {
            key: "shop/web".into(),
            uid: "u1".into(),
            deletion_timestamp: at(120),
            grace_seconds: 120,
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
            processes,
            mounts: Vec::new(),
            pre_stop: false,
            node: "n1".into(),
        };
        let verdict = rules::judge(&pod, at(now));
        Facts {
            detail: PodDetail {
                pod: serde_json::from_value(json!({
                    "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
                    "spec": {"nodeName": "n1", "containers": [{"name": "app"}]}}))
                .unwrap(),
                ..Default::default()
            },
            detail_source: "test",
            oom_kills: Some(Vec::new()),
            processes: None,
            node_info: None,
            terminating: Some((pod, verdict, String::new())),
            runtime: None,
            pod_names: BTreeMap::new(),
            now: at(now),
        }
    }

    fn process(ignores: bool) -> ProcessFact {
        ProcessFact {
            pid: 10,
            ppid: 5,
            command: "sh -c sleep 3600".into(),
            state: "S".into(),
            container_id: Some("c".repeat(64)),
            role: Role::Container,
            start_time: 1,
            ignores_sigterm: ignores,
        }
    }

    #[test]
    fn a_finalizer_is_named_while_the_grace_period_still_runs() {
        let found = check(&judged(&["example.com/guard"], vec![process(false)], 2));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reason, "FinalizersPresent");
        assert!(
            found[0].summary.starts_with(
                "pod shop/web is terminating (118 s of its grace period left): finalizer(s) example.com/guard will keep it"
            ),
            "{}",
            found[0].summary
        );
    }

    #[test]
    fn a_process_ignoring_sigterm_and_a_finalizer_are_both_named() {
        let found = check(&judged(&["example.com/guard"], vec![process(true)], 1));
        let reasons: Vec<&str> = found.iter().map(|f| f.reason).collect();
        assert_eq!(reasons, ["SigtermIgnored", "FinalizersPresent"]);
    }

    #[test]
    fn a_pod_nothing_holds_is_terminating_not_unidentified() {
        let found = check(&judged(&[], vec![process(false)], 2));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reason, "PodTerminating");
        assert!(
            found[0].summary.contains(
                "no finalizer holds it and its 1 container process(es) do not ignore SIGTERM"
            ),
            "{}",
            found[0].summary
        );
    }
}
